"""One exception per HTTP outcome and the one middleware that answers them, as KServe's ``errors.py`` does.

Every refusal, whichever process makes it, reaches the client in the same JSON shape
``{"error": ..., "field": ...}``: a client (or the sidecar in front) reads one shape, and nothing of a
traceback leaks.
"""
from __future__ import annotations

import asyncio
import logging

from aiohttp import web


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
