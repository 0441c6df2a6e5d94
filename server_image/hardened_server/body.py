"""Reading a request body under a size and a time limit, shared by both sidecars (each reads the bodies it
forwards): what is parsed must stay within the limit however the client sends it."""
from __future__ import annotations

import asyncio

from aiohttp import web

from .errors import PayloadTooLarge, RequestTimeout, UnsupportedMediaType

BODY_TIMEOUT_SECONDS = 10.0


async def read_body(request: web.Request, limit: int, timeout: float = BODY_TIMEOUT_SECONDS) -> bytes:
    """Read at most ``limit`` bytes within ``timeout`` seconds: 413 as soon as the header or the stream says
    more, 408 when the body trickles in too slowly (a slow-body client must not hold a handler forever)."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body of {request.content_length} bytes exceeds {limit}", field="body")
    for header in ("Content-Encoding", "Inference-Header-Content-Encoding"):
        encoding = request.headers.get(header, "identity").strip().lower()
        if encoding not in ("", "identity"):
            # Compressed requests are refused (tritonclient's request_compression_algorithm, gzip or deflate, of
            # a JSON or a binary body): a few kilobytes of gzip can inflate to gigabytes (a sponge/DoS input), and
            # the size limit must hold for what is parsed. The servers run with auto_decompress off.
            raise UnsupportedMediaType(f"{header} {encoding[:40]!r} is not accepted; send the body uncompressed",
                                       field=header)
    if request.content.is_eof():  # the whole body came with the headers, the usual small request: no timer
        body = request.content.read_nowait()
        if len(body) > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes", field="body")
        return body
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await request.content.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body exceeds {limit} bytes", field="body")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"request body not received within {timeout:g}s", field="body") from None
    return b"".join(chunks)
