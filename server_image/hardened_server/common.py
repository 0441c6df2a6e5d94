"""What the three serving processes share: config, errors, JSON logs, metrics, running an app.

Errors follow KServe's ``errors.py``: one exception per HTTP outcome, one
handler that turns it into a JSON body ``{"error": ..., "field": ...}``.
"""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import sys
import time
from typing import Any, Awaitable, Callable, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from hardened_model.contracts import SERVING_CONFIG_API_VERSION
from hardened_model.spec import DNS_LABEL, Auth, Output, RateLimit, Validation

# ----------------------------------------------------------------- config


class ModelShape(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)
    name: str = Field(pattern=DNS_LABEL, max_length=63)
    input_shape: list[int] = Field(min_length=1, max_length=4)
    num_classes: int = Field(ge=2)
    labels: list[str]
    tabular: bool = False  # the validation sidecar then checks features from model.json (hardened_server.tabular)


class ServingConfig(BaseModel):
    """serving.json: rendered from the spec by build_serving_config; read by every serving process."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)
    api_version: Literal[SERVING_CONFIG_API_VERSION]  # type: ignore[valid-type]
    model: ModelShape
    validation: Validation
    rate_limit: RateLimit
    output: Output
    auth: Auth = Auth()


class ConfigError(ValueError):
    pass


def load_serving_config(path: str) -> ServingConfig:
    try:
        with open(path, encoding="utf-8") as fh:
            return ServingConfig.model_validate(json.load(fh))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON: {exc}") from None
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: {field}: {first['msg']}") from None


# ----------------------------------------------------------------- errors
class HTTPError(Exception):
    status = 500
    reason = "internal"

    def __init__(self, message: str, field: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message, self.field, self.headers = message, field, headers or {}

    def response(self) -> web.Response:
        body = {"error": self.message}
        if self.field:
            body["field"] = self.field
        return web.json_response(body, status=self.status, headers=self.headers)


class InvalidInput(HTTPError):
    status, reason = 400, "invalid_input"


class Unauthorized(HTTPError):
    status, reason = 401, "unauthorized"


class NotFound(HTTPError):
    status, reason = 404, "not_found"


class MethodNotAllowed(HTTPError):
    status, reason = 405, "method_not_allowed"


class PayloadTooLarge(HTTPError):
    status, reason = 413, "body_too_large"


class RequestTimeout(HTTPError):
    status, reason = 408, "body_timeout"


class UnsupportedMediaType(HTTPError):
    status, reason = 415, "unsupported_media_type"


class TooManyRequests(HTTPError):
    status, reason = 429, "rate_limited"


class UpstreamError(HTTPError):
    status, reason = 502, "upstream_error"


class ModelNotReady(HTTPError):
    status, reason = 503, "model_not_ready"


class LimiterUnavailable(HTTPError):
    status, reason = 503, "limiter_unavailable"


# ------------------------------------------------------------------- logs
class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(name: str, level: str = "INFO") -> logging.Logger:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # one line per request is the app's job
    return logging.getLogger(name)


def log_fields(logger: logging.Logger, level: int, msg: str, **fields: Any) -> None:
    logger.log(level, msg, extra={"fields": fields})


# ---------------------------------------------------------------- running
BODY_TIMEOUT_SECONDS = 10.0


async def read_body(request: web.Request, limit: int, timeout: float = BODY_TIMEOUT_SECONDS) -> bytes:
    """Read at most ``limit`` bytes within ``timeout`` seconds: 413 as soon as the header or the stream says
    more, 408 when the body trickles in too slowly (a slow-body client must not hold a handler forever)."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body of {request.content_length} bytes exceeds {limit}", field="body")
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # Compressed requests are refused: a few kilobytes of gzip can inflate to gigabytes (a sponge/DoS
        # input), and the size limit must hold for what is parsed. The servers run with auto_decompress off.
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not accepted; send the body uncompressed",
                                   field="Content-Encoding")
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


class InternalError(HTTPError):
    status, reason = 500, "internal_error"


def error_middleware(on_error=None):
    @web.middleware
    async def middleware(request: web.Request, handler):
        try:
            return await handler(request)
        except (asyncio.CancelledError, web.HTTPSuccessful, web.HTTPRedirection):
            raise
        except HTTPError as exc:
            if on_error:
                on_error(request, exc)
            return exc.response()
        except web.HTTPException as exc:  # aiohttp's own (404 route, 405 method): keep our JSON shape
            err = {404: NotFound, 405: MethodNotAllowed, 413: PayloadTooLarge}.get(exc.status)
            if err is None:
                raise
            wrapped = err(exc.reason or "error", field="path" if exc.status != 413 else "body")
            if on_error:
                on_error(request, wrapped)
            return wrapped.response()
        except Exception:  # noqa: BLE001 - a bug must not leak internals; log it, answer JSON 500
            logging.getLogger("hardened.server").exception("unhandled error", extra={"fields": {"path": request.path}})
            exc = InternalError("internal error; see the server log")
            if on_error:
                on_error(request, exc)
            return exc.response()
    return middleware


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


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
