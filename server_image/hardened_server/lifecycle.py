"""The life of a serving process around its app: the listeners, the admin port (metrics and the kubelet's
probes), and on SIGTERM a drain of the requests in flight, so a rolling update drops none."""
from __future__ import annotations

import asyncio
import gc
import logging
import signal
from typing import Awaitable, Callable

from aiohttp import web

from .logs import log_fields


async def metrics_handler(request: web.Request) -> web.Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def metrics_app(ready: Callable[[], bool] = lambda: True,
                chain_ready: Callable[[], Awaitable[bool]] | None = None) -> web.Application:
    """The admin port: /metrics, and the kubelet's probes /healthz and /readyz.

    Metrics live on their own port, so clients reaching the Service cannot read them. The probes live here
    too because the model server and the validation sidecar listen on 127.0.0.1 (only their neighbours in the
    pod may reach them), and the kubelet probes the pod IP: an httpGet probe of a loopback-only port is
    refused, which would fail readiness for ever and restart the container every liveness period.
    /healthz answers while the event loop runs; /readyz while ``ready()`` holds and, when given,
    ``chain_ready()`` (the rate-limit sidecar asks the rest of the chain: its public port may demand TLS client
    certificates, which the kubelet does not have).
    """
    async def healthz(_):
        return web.json_response({"live": True})

    async def readyz(_):
        if not ready() or (chain_ready is not None and not await chain_ready()):
            return web.json_response({"ready": False}, status=503)
        return web.json_response({"ready": True})

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def serve(app: web.Application, *, host: str, port: int, metrics_port: int | None, logger: logging.Logger,
                metrics_host: str | None = None, is_ready: Callable[[], bool] = lambda: True,
                chain_ready: Callable[[], Awaitable[bool]] | None = None, ssl_context=None,
                listening: asyncio.Event | None = None, shutdown_timeout: float = 10.0) -> None:
    """Run ``app`` on host:port and the admin app (metrics, probes) on metrics_host:metrics_port (default: the
    same host) until SIGTERM/SIGINT, then drain in-flight requests. /readyz fails from SIGTERM on, and
    whenever ``is_ready()`` does not hold."""
    stop = asyncio.Event()
    runners = []
    admin = metrics_app(lambda: not stop.is_set() and is_ready(), chain_ready)
    for a, h, p, tls in [(app, host, port, ssl_context), (admin, metrics_host or host, metrics_port, None)]:
        if p is None:
            continue
        runner = web.AppRunner(a, access_log=None, shutdown_timeout=shutdown_timeout, auto_decompress=False)
        await runner.setup()
        await web.TCPSite(runner, h, p, backlog=1024, reuse_address=True, ssl_context=tls).start()
        runners.append(runner)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Everything built so far (imports, config, the model) lives as long as the process. Frozen out of the
    # collector, a full collection stops walking it while requests wait: on the CI machine a full collection
    # took 21-30 ms after the sidecars' imports and 85-110 ms after the model server's (torch), and under
    # 0.01 ms after gc.freeze() (benchmarks/serving_micro.py).
    gc.collect()
    gc.freeze()
    log_fields(logger, logging.INFO, "listening", host=host, port=port, tls=ssl_context is not None,
               metrics_host=metrics_host or host, metrics_port=metrics_port)
    if listening:
        listening.set()
    await stop.wait()
    log_fields(logger, logging.INFO, "shutting down", drain_seconds=shutdown_timeout)
    for runner in runners:
        await runner.cleanup()  # stops accepting, waits for in-flight requests up to shutdown_timeout
    log_fields(logger, logging.INFO, "stopped")
