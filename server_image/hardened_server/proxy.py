"""Forwarding to the next hop over a pool of keep-alive HTTP/1.1 connections, shared by both sidecars.

The next hop is the pod's own validation sidecar or model server on loopback, so this is a small client for
exactly that: one request at a time per connection, responses framed by Content-Length or chunked encoding
and parsed by httptools (llhttp, the parser uvicorn uses).

Why not aiohttp's client, which the sidecars used before: the same aiohttp proxy in front of an instant
upstream used 201-250 us of CPU per request with aiohttp's client and 93-127 us with this pool, and served
3,900-5,000 against 7,100-10,700 requests/s (benchmarks/proxy_overhead.py, four runs on the 2-core CI
machine; docs/benchmarks.md). Every sidecar request pays it once per hop.
"""
from __future__ import annotations

import asyncio
import collections
import urllib.parse

import httptools
from aiohttp import web

from .errors import UpstreamError

# Hop-by-hop and credential headers never travel upstream.
_DROP = {"host", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
         "proxy-authorization", "authorization", "x-api-key", "content-length", "expect"}
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class _Failed(Exception):
    """The exchange failed; ``retryable`` when a reused connection closed before any response byte."""

    def __init__(self, reason: str, retryable: bool = False):
        super().__init__(reason)
        self.retryable = retryable


class _Connection(asyncio.Protocol):
    """One keep-alive connection to the upstream, carrying one request at a time."""

    def __init__(self):
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.fut: asyncio.Future | None = None
        self.parser = None
        self.received = 0

    # -- asyncio.Protocol
    def connection_made(self, transport):
        self.transport = transport
        self.parser = httptools.HttpResponseParser(self)  # one per connection: it parses message after message

    def connection_lost(self, exc):
        self.closed = True
        self._fail(_Failed("upstream closed the connection", retryable=self.reused and self.received == 0))

    def data_received(self, data: bytes):
        if self.fut is None or self.fut.done():  # bytes nobody asked for: this connection is out of step
            self.transport.close()
            return
        self.received += len(data)
        if self.received > MAX_RESPONSE_BYTES:
            self._fail(_Failed(f"upstream response exceeds {MAX_RESPONSE_BYTES} bytes"))
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(_Failed(f"upstream sent malformed HTTP: {exc}"))

    # -- httptools callbacks
    def on_header(self, name: bytes, value: bytes):
        self.headers.append((name, value))

    def on_body(self, body: bytes):
        self.body.append(body)

    def on_message_complete(self):
        if not self.fut.done():
            self.fut.set_result((self.parser.get_status_code(), self.headers, b"".join(self.body),
                                 self.parser.should_keep_alive()))

    # -- use
    def send(self, data: bytes) -> asyncio.Future:
        self.headers, self.body, self.received = [], [], 0
        self.fut = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.fut

    def _fail(self, exc: _Failed):
        if self.fut is not None and not self.fut.done():
            self.fut.set_exception(exc)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class Upstream:
    def __init__(self, base_url: str, *, timeout: float = 30.0, limit: int = 256):
        url = urllib.parse.urlsplit(base_url)
        if url.scheme != "http" or not url.hostname or url.path.strip("/") or url.query:
            raise ValueError(f"--upstream {base_url!r}: expected http://HOST:PORT (the next container in the pod)")
        self.base_url = base_url.rstrip("/")
        self.host, self.port = url.hostname, url.port or 80
        self._host_header = f"Host: {url.netloc}\r\n".encode("latin-1")
        self.timeout = timeout
        self._idle: collections.deque[_Connection] = collections.deque()
        self._slots = asyncio.Semaphore(limit)

    async def start(self, _app=None) -> None:
        pass  # connections open on first use

    async def close(self, _app=None) -> None:
        while self._idle:
            conn = self._idle.pop()
            if conn.transport is not None:
                conn.transport.close()

    async def _connection(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        _, conn = await asyncio.get_running_loop().create_connection(_Connection, self.host, self.port)
        return conn

    async def _exchange(self, head: bytes, body: bytes | None) -> tuple[int, list, bytes]:
        conn = await self._connection()
        timer = asyncio.get_running_loop().call_later(self.timeout, conn._fail,
                                                      _Failed(f"no answer in {self.timeout:g}s"))
        try:
            status, headers, payload, keep_alive = await conn.send(head + body if body else head)
        except BaseException:
            conn._fail(_Failed("request abandoned"))  # a late answer must not reach the next request
            raise
        finally:
            timer.cancel()
        if keep_alive and not conn.closed:
            conn.reused = False
            self._idle.append(conn)
        else:
            conn.transport.close()
        return status, headers, payload

    async def status_of(self, path: str) -> int:
        """GET ``path`` upstream: its status, or 0 when the upstream does not answer."""
        head = f"GET {path} HTTP/1.1\r\n".encode() + self._host_header + b"\r\n"
        async with self._slots:
            for attempt in (1, 2):
                try:
                    return (await self._exchange(head, None))[0]
                except _Failed as exc:
                    if not exc.retryable or attempt == 2:
                        return 0
                except OSError:
                    return 0
        return 0

    async def forward(self, request: web.Request, body: bytes | None, extra_headers: dict | None = None, *,
                      drop: frozenset = frozenset()) -> tuple[int, dict, bytes]:
        """``drop``: more (lower-case) header names not to copy from the request, as when ``body`` is not the
        request's own and ``extra_headers`` describe it (header names compare without case, dict keys do not)."""
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP and k.lower() not in drop}
        headers.update(extra_headers or {})
        lines = [f"{request.method} {request.raw_path} HTTP/1.1\r\n".encode("utf-8", "surrogateescape"),
                 self._host_header]
        # aiohttp decoded the header bytes as UTF-8 with surrogateescape; this gives back the bytes received
        lines += [f"{k}: {v}\r\n".encode("utf-8", "surrogateescape") for k, v in headers.items()]
        if body is not None:
            lines.append(b"Content-Length: %d\r\n" % len(body))
        lines.append(b"\r\n")
        head = b"".join(lines)
        async with self._slots:
            for attempt in (1, 2):
                try:
                    status, raw, payload = await self._exchange(head, body)
                    break
                except _Failed as exc:
                    if not exc.retryable or attempt == 2:  # a kept-alive connection the upstream had just closed
                        raise UpstreamError(f"upstream {self.base_url} failed: {exc}") from None
                except OSError as exc:
                    raise UpstreamError(f"upstream {self.base_url} failed: {type(exc).__name__}") from None
        out = {}
        for name, value in raw:
            key = name.decode("latin-1")
            if key.lower() not in _DROP:
                out[key] = value.decode("latin-1")
        return status, out, payload
