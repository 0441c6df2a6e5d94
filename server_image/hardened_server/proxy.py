"""Forwarding to the next hop (keep-alive pool), shared by both sidecars."""
from __future__ import annotations

import aiohttp
from aiohttp import web

from .common import UpstreamError

# Hop-by-hop and credential headers never travel upstream.
_DROP = {"host", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
         "proxy-authorization", "authorization", "x-api-key", "content-length", "expect"}


class Upstream:
    def __init__(self, base_url: str, *, timeout: float = 30.0, limit: int = 256):
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.limit = limit
        self.session: aiohttp.ClientSession | None = None

    async def start(self, _app=None) -> None:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.limit),
                                             timeout=self.timeout, auto_decompress=False)

    async def close(self, _app=None) -> None:
        if self.session:
            await self.session.close()

    async def forward(self, request: web.Request, body: bytes | None, extra_headers: dict | None = None
                      ) -> tuple[int, dict, bytes]:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP}
        headers.update(extra_headers or {})
        try:
            async with self.session.request(request.method, self.base_url + request.rel_url.path_qs,
                                            data=body, headers=headers) as resp:
                payload = await resp.read()
                return resp.status, {k: v for k, v in resp.headers.items() if k.lower() not in _DROP}, payload
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"upstream {self.base_url} failed: {type(exc).__name__}") from None
