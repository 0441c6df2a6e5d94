"""The sidecars' upstream pool (proxy.Upstream) against scripted upstreams on 127.0.0.1."""
import asyncio

import pytest
from aiohttp.test_utils import make_mocked_request

from hardened_server import proxy
from hardened_server.errors import UpstreamError

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"


class Scripted:
    """An upstream whose every connection runs ``script(reader, writer, connection_number)``."""

    def __init__(self, script):
        self.script, self.connections, self.requests = script, 0, []

    async def __aenter__(self):
        async def handle(reader, writer):
            self.connections += 1
            try:
                await self.script(self, reader, writer, self.connections)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    async def read_request(self, reader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        return head + body


async def keep_alive(up, reader, writer, n):
    while True:
        await up.read_request(reader)
        writer.write(OK)


def request(method="POST", headers=None):
    return make_mocked_request(method, "/v2/models/m/infer?x=1", headers=headers or {})


async def test_requests_share_one_keep_alive_connection_and_credentials_stay_behind():
    async with Scripted(keep_alive) as up:
        pool = proxy.Upstream(up.url)
        for _ in range(5):
            status, headers, body = await pool.forward(
                request(headers={"Authorization": "Bearer secret-key-123456", "X-API-Key": "other-key-123456",
                                 "Content-Type": "application/json", "X-Request-Id": "r1"}),
                b'{"a":1}', {"X-Client-Id": "abc123"})
            assert (status, headers["Content-Type"], body) == (200, "application/json", b'{"ok":true}')
        await pool.close()
    assert up.connections == 1
    sent = up.requests[0].decode()
    assert sent.startswith("POST /v2/models/m/infer?x=1 HTTP/1.1\r\n")
    assert "X-Client-Id: abc123" in sent and "X-Request-Id: r1" in sent and sent.endswith('\r\n\r\n{"a":1}')
    assert "secret-key" not in sent and "other-key" not in sent and "Content-Length: 7" in sent


async def test_a_kept_alive_connection_the_upstream_closed_is_retried_once_on_a_new_one():
    async def closes_on_the_second_request(up, reader, writer, n):
        await up.read_request(reader)
        writer.write(OK)
        if n == 1:  # the keep-alive race: the upstream gives up on the connection as the next request arrives
            await up.read_request(reader)

    async with Scripted(closes_on_the_second_request) as up:
        pool = proxy.Upstream(up.url)
        assert (await pool.forward(request(), b"{}"))[0] == 200
        assert (await pool.forward(request(), b"{}"))[0] == 200
        await pool.close()
    assert up.connections == 2 and len(up.requests) == 3  # sent twice, answered once


async def test_chunked_responses_are_reassembled():
    async def chunked(up, reader, writer, n):
        await up.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with Scripted(chunked) as up:
        pool = proxy.Upstream(up.url)
        status, headers, body = await pool.forward(request(), b"{}")
        await pool.close()
    assert (status, body) == (200, b'{"a":1}') and "Transfer-Encoding" not in headers


@pytest.mark.parametrize("name, script, match", [
    ("silent", lambda up, r, w, n: asyncio.sleep(5), "no answer in 0.3s"),
    ("garbage", None, "malformed HTTP"),
    ("cut mid-body", None, "closed the connection"),
])
async def test_upstream_failures_are_502s_that_say_why(name, script, match):
    async def garbage(up, reader, writer, n):
        await up.read_request(reader)
        writer.write(b"HTTP/1.1 2OO OK\r\n\r\n")
        await writer.drain()
        await reader.read()

    async def cut(up, reader, writer, n):
        await up.read_request(reader)
        writer.write(OK[:-4])
        await writer.drain()

    script = script or {"garbage": garbage, "cut mid-body": cut}[name]
    async with Scripted(script) as up:
        pool = proxy.Upstream(up.url, timeout=0.3)
        with pytest.raises(UpstreamError, match=match) as err:
            await pool.forward(request(), b"{}")
        await pool.close()
    assert err.value.status == 502 and up.connections == 1  # a fresh connection that failed is not retried


async def test_refused_connection_is_a_502():
    async with Scripted(keep_alive) as up:
        url = up.url
    with pytest.raises(UpstreamError, match="ConnectionRefusedError"):
        await proxy.Upstream(url).forward(request(), b"{}")


async def test_an_oversized_response_is_refused(monkeypatch):
    monkeypatch.setattr(proxy, "MAX_RESPONSE_BYTES", 1000)

    async def big(up, reader, writer, n):
        await up.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000)
        await writer.drain()
        await reader.read()

    async with Scripted(big) as up:
        with pytest.raises(UpstreamError, match="exceeds 1000 bytes"):
            await proxy.Upstream(up.url).forward(request(), b"{}")


async def test_an_abandoned_request_closes_its_connection():
    async def slow(up, reader, writer, n):
        while True:
            raw = await up.read_request(reader)
            if b"slow" in raw:
                try:  # the pool hangs up at once rather than leave a busy connection behind
                    up.closed_early = await asyncio.wait_for(reader.read(), 0.3) == b""
                except TimeoutError:
                    up.closed_early = False
                writer.write(OK.replace(b'{"ok":true}', b'{"late":11}'))
                return
            writer.write(OK)

    async with Scripted(slow) as up:
        pool = proxy.Upstream(up.url)
        task = asyncio.create_task(pool.forward(request(), b'"slow"'))
        await asyncio.sleep(0.1)
        task.cancel()  # the client went away while the upstream was working
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await pool.forward(request(), b"{}"))[2] == b'{"ok":true}'  # a new connection, not the busy one
        await asyncio.sleep(0.3)
        await pool.close()
    assert up.connections == 2 and up.closed_early


def test_only_a_plain_http_host_port_is_an_upstream():
    for bad in ("https://127.0.0.1:8080", "127.0.0.1:8080", "http://127.0.0.1:8080/v2", "http:///x"):
        with pytest.raises(ValueError, match="expected http://HOST:PORT"):
            proxy.Upstream(bad)
