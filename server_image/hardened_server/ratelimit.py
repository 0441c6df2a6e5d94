"""The rate-limit sidecar: API keys and token buckets (the ``limits`` library) in front of validation.

Authentication: keys come from a mounted file (one per line, ``#`` comments),
re-read when it changes. A request carries ``Authorization: Bearer <key>`` or
``X-API-Key``. Keys are kept as SHA-256 digests and every digest is compared
with ``hmac.compare_digest`` (no early exit), so timing reveals nothing; a
client is known by its *key id* (the first 12 hex digits of the digest) in
logs, metrics and limiter keys. Missing or unknown key: 401.

Buckets: a token bucket (rate r, burst b) is a ``limits`` moving window of b
hits per b/r seconds (b/r rounded up to whole seconds, so the sustained rate
never exceeds r). One bucket per key id and, optionally, one global bucket.
Storage ``memory://`` is per replica; ``redis://`` is shared by every replica.
Refused: 429 with ``Retry-After``. Limiter state exists only for valid keys,
so memory is bounded by the key file, whatever clients send.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import time

from aiohttp import web

from .common import (BODY_TIMEOUT_SECONDS, ServingConfig, Timer, TooManyRequests, Unauthorized, error_middleware,
                     log_fields, read_body)
from .metrics import METRICS
from .proxy import Upstream


CLIENT = web.RequestKey("client", str)  # the key id of an authenticated request


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class ApiKeys:
    """API keys from a file, hashed at load; reloaded when the file's mtime or size changes."""

    def __init__(self, path: str, *, check_every: float = 2.0):
        self.path, self.check_every = path, check_every
        self.digests: list[bytes] = []
        self._stamp: tuple | None = None
        self._checked = 0.0
        self.reload()

    def reload(self) -> None:
        st = os.stat(self.path)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        with open(self.path, encoding="utf-8") as fh:
            keys = [line.strip() for line in fh if line.strip() and not line.lstrip().startswith("#")]
        short = [i for i, k in enumerate(keys) if len(k) < 16]
        if short:
            raise ValueError(f"{self.path}: line {short[0] + 1}: API keys must have at least 16 characters")
        self.digests = [hashlib.sha256(k.encode()).digest() for k in keys]
        self._stamp = stamp

    def maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked >= self.check_every:
            self._checked = now
            try:
                self.reload()
            except (OSError, ValueError):
                pass  # keep the keys we have; a Secret update swaps the file atomically

    def authenticate(self, presented: str | None) -> str:
        if not presented:
            raise Unauthorized("missing API key (Authorization: Bearer <key> or X-API-Key)", field="Authorization")
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        match = False
        for known in self.digests:  # no early exit: constant time in the number of keys
            match |= hmac.compare_digest(digest, known)
        if not match:
            raise Unauthorized("unknown API key", field="Authorization")
        return digest.hex()[:12]


def bucket_item(requests_per_second: float, burst: float):
    """A token bucket as a limits moving window: burst hits per ceil(burst / rate) seconds."""
    from limits import RateLimitItemPerSecond

    window = max(1, math.ceil(burst / requests_per_second))
    return RateLimitItemPerSecond(int(burst), window)


class Limiter:
    """Moving windows in ``limits``: its synchronous in-process storage for ``memory://``, called inline, and
    its asyncio storage (redis-py) for ``redis://``, shared by every replica.

    Why not the asyncio memory storage: it hops to a worker thread for every key on each expiry pass, and a
    pass starts after each request. A hit cost 100-115 us of CPU that way and 9-12 us with the synchronous
    storage (benchmarks/serving_micro.py, CI machine); the hop was 11% of the rate-limit sidecar's busy
    samples under wrk. The synchronous storage expires windows on its own timer thread every 10 ms instead,
    but (limits 5.8.0) keeps each emptied window's key: ``admit`` drops those every ``PRUNE_SECONDS``.
    """

    PRUNE_SECONDS = 5.0

    def __init__(self, cfg: ServingConfig):
        from limits import aio, strategies
        from limits.storage import MemoryStorage, storage_from_string

        rl = cfg.rate_limit
        self.inline = rl.storage.startswith("memory://")
        if self.inline:
            self.storage = MemoryStorage()
            self.strategy = strategies.MovingWindowRateLimiter(self.storage)
        else:
            self.storage = storage_from_string("async+" + rl.storage, implementation="redispy")
            self.strategy = aio.strategies.MovingWindowRateLimiter(self.storage)
        self.per_key = bucket_item(rl.per_key.requests_per_second, rl.per_key.burst)
        self.global_ = bucket_item(rl.global_.requests_per_second, rl.global_.burst) if rl.global_ else None
        self.namespace = cfg.model.name
        self._pruned = time.monotonic()

    def _prune(self) -> None:
        """Forget windows limits has emptied. Only this thread adds events, so an empty one stays empty."""
        self._pruned = time.monotonic()
        for key, events in list(self.storage.events.items()):
            if not events:
                self.storage.events.pop(key, None)

    async def _hit(self, item, *ids: str) -> bool:
        return self.strategy.hit(item, *ids) if self.inline else await self.strategy.hit(item, *ids)

    async def retry_after(self, item, *ids: str) -> int:
        stats = self.strategy.get_window_stats(item, *ids)
        if not self.inline:
            stats = await stats
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def admit(self, client: str) -> None:
        if self.inline and time.monotonic() - self._pruned > self.PRUNE_SECONDS:
            self._prune()
        if not await self._hit(self.per_key, self.namespace, "key", client):
            METRICS.rate_limited.labels("key").inc()
            wait = await self.retry_after(self.per_key, self.namespace, "key", client)
            raise TooManyRequests(f"rate limit of this API key exceeded; retry in {wait}s", field="Authorization",
                                  headers={"Retry-After": str(wait)})
        if self.global_ is not None and not await self._hit(self.global_, self.namespace, "global"):
            METRICS.rate_limited.labels("global").inc()
            wait = await self.retry_after(self.global_, self.namespace, "global")
            raise TooManyRequests(f"global rate limit exceeded; retry in {wait}s", field="global",
                                  headers={"Retry-After": str(wait)})


def presented_key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return request.headers.get("X-API-Key") or None


def build_app(cfg: ServingConfig, upstream: Upstream, keys: ApiKeys, *, logger: logging.Logger,
              limiter: Limiter | None = None, body_timeout: float = BODY_TIMEOUT_SECONDS) -> web.Application:
    limiter = limiter or Limiter(cfg)
    max_body = cfg.validation.max_body_bytes

    def on_error(request, exc):
        METRICS.requests.labels("ratelimit", "rejected", exc.reason).inc()
        log_fields(logger, logging.INFO, "rejected", status=exc.status, reason=exc.reason, path=request.path,
                   client=request.get(CLIENT))  # a key id, never the key

    app = web.Application(middlewares=[error_middleware(on_error)], client_max_size=max_body)
    app.on_startup.append(upstream.start)
    app.on_cleanup.append(upstream.close)

    async def guarded(request: web.Request) -> web.Response:
        t = Timer()
        keys.maybe_reload()
        client = keys.authenticate(presented_key(request))
        request[CLIENT] = client
        await limiter.admit(client)
        body = await read_body(request, max_body, body_timeout) if request.method == "POST" else None
        status, headers, payload = await upstream.forward(request, body, {"X-Client-Id": client})
        METRICS.client_requests.labels(client).inc()
        METRICS.requests.labels("ratelimit", "forwarded", str(status)).inc()
        METRICS.latency.labels("ratelimit").observe(t.elapsed())
        return web.Response(status=status, body=payload, content_type=headers.get("Content-Type",
                                                                                  "application/json").split(";")[0])

    async def health(request: web.Request) -> web.Response:
        """Probes reach health without a key; everything else needs one."""
        status, _, payload = await upstream.forward(request, None)
        return web.Response(status=status, body=payload, content_type="application/json")

    app.router.add_get("/v2/health/live", health)
    app.router.add_get("/v2/health/ready", health)
    app.router.add_post("/v2/models/{name}/infer", guarded)
    app.router.add_get("/v2/models/{name}", guarded)
    app.router.add_get("/v2/models/{name}/ready", guarded)
    app.router.add_get("/v2", guarded)
    return app


async def run(args) -> int:
    from .common import ConfigError, load_serving_config, serve, setup_logging

    logger = setup_logging("hardened.ratelimit", args.log_level)
    try:
        cfg = load_serving_config(args.config)
        keys = ApiKeys(args.api_keys)
        if not keys.digests:
            raise ValueError(f"{args.api_keys}: no API keys")
        limiter = Limiter(cfg)
        app = build_app(cfg, Upstream(args.upstream), keys, logger=logger, limiter=limiter,
                        body_timeout=args.body_timeout)
    except (ConfigError, ValueError, OSError) as exc:
        log_fields(logger, logging.ERROR, "bad configuration", error=str(exc))
        return 2
    log_fields(logger, logging.INFO, "api keys loaded", count=len(keys.digests))
    await serve(app, host=args.host, port=args.port, metrics_host=args.metrics_host,
                metrics_port=args.metrics_port, logger=logger)
    return 0
