"""The rate-limit sidecar: the public port. TLS, authentication (API keys, JWT), failed-authentication
budgets per address, token buckets and quotas per client (the ``limits`` library), in front of validation.

Order of a request: the caller's address is checked against its failed-authentication budget (exhausted:
429 before any credential is compared, so a key guesser learns nothing more); the credential is checked
(API key or JWT, see ``auth``; a failure spends one unit of the address's budget and answers 401); the
client's bucket, the global bucket and the client's quota are hit (429 with ``Retry-After``); the request
goes to the validation sidecar. Answers carry ``RateLimit-Policy`` and ``RateLimit``
(draft-ietf-httpapi-ratelimit-headers: ``"gold";q=20;w=2`` is 20 requests per 2-second window,
``"gold-quota";r=7;t=3600`` is 7 left for 3600 seconds).

Buckets: a token bucket (rate r, burst b) is a ``limits`` moving window of b hits per b/r seconds (b/r
rounded up to whole seconds, so the sustained rate never exceeds r). Quotas are fixed windows of 1 day or 30
days from a client's first request in them. Storage ``memory://`` is per replica; ``redis://`` is shared by
every replica. Redis down or slow (no answer within ``REMOTE_TIMEOUT``, 2 s): ``failMode: closed`` answers 503 with
``Retry-After``, ``open`` admits under this replica's in-memory limits; redis is tried again after
``RETRY_REMOTE_SECONDS``. Either way a metric counts it, and nothing answers 500.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import math
import time

from aiohttp import web

from hardened_model.contracts import ServingConfig

from .auth import ApiKeys, ClientAddress, JwtVerifier, Principal, looks_like_jwt
from .body import BODY_TIMEOUT_SECONDS, read_body
from .errors import LimiterUnavailable, TooManyRequests, Unauthorized, error_middleware
from .logs import log_fields
from .metrics import METRICS, Timer
from .proxy import Upstream

CLIENT = web.RequestKey("client", str)  # the client id of an authenticated request
_SET_HERE = frozenset({"x-client-id"})  # only this sidecar says who the client is (any case the client sends)
QUOTA_SECONDS = {"day": 86400, "month": 30 * 86400}


def bucket_item(requests_per_second: float, burst: float):
    """A token bucket as a limits moving window: burst hits per ceil(burst / rate) seconds."""
    from limits import RateLimitItemPerSecond

    window = max(1, math.ceil(burst / requests_per_second))
    return RateLimitItemPerSecond(int(burst), window)


def quota_item(quota):
    from limits import RateLimitItemPerDay, RateLimitItemPerMonth

    return (RateLimitItemPerDay if quota.period == "day" else RateLimitItemPerMonth)(quota.requests, 1)


class _Policy:
    def __init__(self, name: str, bucket, quota=None):
        self.name, self.bucket, self.quota = name, bucket, quota
        parts = [f'"{name}";q={bucket.amount};w={bucket.get_expiry()}']
        if quota is not None:
            parts.append(f'"{name}-quota";q={quota.amount};w={quota.get_expiry()}')
        self.header = ", ".join(parts)


class _Backend:
    """One storage and its strategies: moving windows (buckets) and fixed windows (quotas). ``memory://`` uses
    limits' synchronous storage, called inline; ``redis://`` its asyncio storage over a bounded, blocking
    connection pool.

    Why not the asyncio memory storage: it hops to a worker thread for every key on each expiry pass, and a
    pass starts after each request. A hit cost 100-115 us of CPU that way and 9-12 us with the synchronous
    storage (benchmarks/serving_micro.py, CI machine). The synchronous storage expires windows on its own timer
    thread every 10 ms, but (limits 5.8.0) keeps each emptied window's key: ``prune`` drops those.

    Why a blocking pool: limits' default redis pool raises "Too many connections" once more requests are in
    flight than it holds connections; on a busy machine that was 1,084 answers of 500 in one overload run
    (issue 16). A blocking pool makes a request wait for a connection, within REMOTE_TIMEOUT.
    """

    def __init__(self, uri: str, *, pool_size: int = 32, timeout: float = 0.5):
        from limits import aio, strategies
        from limits.storage import MemoryStorage, storage_from_string

        self.inline = uri.startswith("memory://")
        if self.inline:
            self.storage = MemoryStorage()
            self.moving = strategies.MovingWindowRateLimiter(self.storage)
            self.fixed = strategies.FixedWindowRateLimiter(self.storage)
        else:
            import redis.asyncio

            pool = redis.asyncio.BlockingConnectionPool.from_url(
                uri, max_connections=pool_size, timeout=timeout, socket_timeout=timeout,
                socket_connect_timeout=timeout)
            self.storage = storage_from_string("async+" + uri, implementation="redispy", connection_pool=pool)
            self.moving = aio.strategies.MovingWindowRateLimiter(self.storage)
            self.fixed = aio.strategies.FixedWindowRateLimiter(self.storage)

    async def call(self, op: str, item, *ids: str):
        strategy = self.fixed if item.GRANULARITY.seconds >= 86400 else self.moving
        result = getattr(strategy, op)(item, *ids)
        return result if self.inline else await result

    def prune(self) -> None:
        """Forget windows limits has emptied. Only this thread adds events, so an empty one stays empty."""
        for key, events in list(self.storage.events.items()):
            if not events:
                self.storage.events.pop(key, None)


class Limiter:
    PRUNE_SECONDS = 5.0
    # A storage call may wait this long (for a pooled connection and the answer). 0.5 s was too short on a
    # starved machine: beside two busy loops, 399 of 6,000 overload requests got 503 from timeouts while redis
    # was healthy. A dead redis still fails at once (connection refused), and after any failure redis is
    # skipped for RETRY_REMOTE_SECONDS.
    REMOTE_TIMEOUT = 2.0
    RETRY_REMOTE_SECONDS = 1.0
    FAILED_MEMO = 100_000  # addresses with a recent failed authentication remembered by this replica

    def __init__(self, cfg: ServingConfig, *, logger: logging.Logger | None = None):
        rl = cfg.rate_limit
        self.logger = logger or logging.getLogger("hardened.ratelimit")
        self.local = _Backend("memory://")
        self.remote = None if rl.storage.startswith("memory://") else _Backend(rl.storage,
                                                                              timeout=self.REMOTE_TIMEOUT)
        self.fail_mode = rl.fail_mode
        self.default = _Policy("default", bucket_item(rl.per_key.requests_per_second, rl.per_key.burst))
        self.plans = {p.name: _Policy(p.name, bucket_item(p.requests_per_second, p.burst),
                                      quota_item(p.quota) if p.quota else None) for p in rl.plans or ()}
        self.global_ = bucket_item(rl.global_.requests_per_second, rl.global_.burst) if rl.global_ else None
        self.failed = bucket_item(rl.failed_auth.requests_per_second, rl.failed_auth.burst)
        self.namespace = cfg.model.name
        self._pruned = time.monotonic()
        self._remote_down_until = 0.0
        self._failed_seen: collections.OrderedDict[str, float] = collections.OrderedDict()
        METRICS.limiter_storage_up.set(1)

    @property
    def storage(self):  # the in-memory storage (tests look at its windows)
        return self.local.storage

    async def _run(self, op: str, item, *ids: str):
        """One limiter operation on the shared storage; on failure, per failMode."""
        if self.remote is not None:
            now = time.monotonic()
            if now >= self._remote_down_until:
                try:
                    async with asyncio.timeout(self.REMOTE_TIMEOUT):
                        result = await self.remote.call(op, item, *ids)
                    if self._remote_down_until:
                        self._remote_down_until = 0.0
                        METRICS.limiter_storage_up.set(1)
                        log_fields(self.logger, logging.WARNING, "rate-limit storage is back")
                    return result
                except Exception as exc:  # noqa: BLE001 - any storage failure (redis, limits, socket, timeout)
                    if not self._remote_down_until or now - self._remote_down_until > 10:
                        log_fields(self.logger, logging.ERROR, "rate-limit storage failed", fail_mode=self.fail_mode,
                                   error=f"{type(exc).__name__}: {exc}"[:300])
                    self._remote_down_until = now + self.RETRY_REMOTE_SECONDS
                    METRICS.limiter_storage_up.set(0)
                    METRICS.limiter_storage_errors.inc()
            METRICS.limiter_fallback.labels(self.fail_mode).inc()
            if self.fail_mode == "closed":
                raise LimiterUnavailable("rate limiter unavailable; retry shortly", field="rateLimit.storage",
                                         headers={"Retry-After": "1"})
        if self.local.inline and time.monotonic() - self._pruned > self.PRUNE_SECONDS:
            self._pruned = time.monotonic()
            self.local.prune()
        return await self.local.call(op, item, *ids)

    async def _seconds_left(self, item, *ids: str) -> int:
        stats = await self._run("get_window_stats", item, *ids)
        return max(1, math.ceil(stats.reset_time - time.time()))

    # ------------------------------------------------------------ failed authentication
    def _recently_failed(self, addr: str) -> bool:
        at = self._failed_seen.get(addr)
        if at is None:
            return False
        if time.monotonic() - at > self.failed.get_expiry():
            del self._failed_seen[addr]
            return False
        return True

    async def check_address(self, addr: str) -> None:
        """Before any credential is compared. Only addresses this replica saw fail are looked up, so a
        good request costs no storage call; with redis, an address is throttled by the shared budget once it
        has failed here too (at most one extra attempt per replica)."""
        if self._recently_failed(addr) and not await self._run("test", self.failed, self.namespace, "failed", addr):
            METRICS.auth_throttled.inc()
            wait = await self._seconds_left(self.failed, self.namespace, "failed", addr)
            raise TooManyRequests(f"too many failed authentications from this address; retry in {wait}s",
                                  field="Authorization", headers={"Retry-After": str(wait)})

    async def record_failure(self, addr: str) -> None:
        self._failed_seen[addr] = time.monotonic()
        self._failed_seen.move_to_end(addr)
        while len(self._failed_seen) > self.FAILED_MEMO:
            self._failed_seen.popitem(last=False)
        await self._run("hit", self.failed, self.namespace, "failed", addr)

    # ------------------------------------------------------------ admitted clients
    async def admit(self, who: Principal | str) -> dict[str, str]:
        """Hit the client's bucket, the global bucket and the client's quota; the rate-limit headers."""
        who = who if isinstance(who, Principal) else Principal(who, None)
        policy = self.plans.get(who.plan, self.default) if who.plan else self.default
        ids = (self.namespace, "client", who.client)
        if not await self._run("hit", policy.bucket, *ids):
            METRICS.rate_limited.labels("key").inc()
            wait = await self._seconds_left(policy.bucket, *ids)
            raise TooManyRequests(f"rate limit of this client exceeded; retry in {wait}s", field="Authorization",
                                  headers={"Retry-After": str(wait), "RateLimit-Policy": policy.header,
                                           "RateLimit": f'"{policy.name}";r=0;t={wait}'})
        if self.global_ is not None and not await self._run("hit", self.global_, self.namespace, "global"):
            METRICS.rate_limited.labels("global").inc()
            wait = await self._seconds_left(self.global_, self.namespace, "global")
            raise TooManyRequests(f"global rate limit exceeded; retry in {wait}s", field="global",
                                  headers={"Retry-After": str(wait), "RateLimit-Policy": policy.header})
        if policy.quota is not None:
            qids = (self.namespace, "quota", who.client)
            if not await self._run("hit", policy.quota, *qids):
                METRICS.rate_limited.labels("quota").inc()
                wait = await self._seconds_left(policy.quota, *qids)
                raise TooManyRequests(
                    f"quota of {policy.quota.amount} requests per {policy.quota.get_expiry() // 86400} day(s) used "
                    f"up; retry in {wait}s", field="Authorization",
                    headers={"Retry-After": str(wait), "RateLimit-Policy": policy.header,
                             "RateLimit": f'"{policy.name}-quota";r=0;t={wait}'})
            item, name, ids = policy.quota, f"{policy.name}-quota", qids
        else:
            item, name = policy.bucket, policy.name
        stats = await self._run("get_window_stats", item, *ids)
        left = max(0, math.ceil(stats.reset_time - time.time()))
        return {"RateLimit-Policy": policy.header, "RateLimit": f'"{name}";r={stats.remaining};t={left}'}


class Authenticator:
    """API keys and/or JWT, as serving.auth says. A bearer value shaped like a JWT goes to the JWT verifier
    when JWT is on; anything else is an API key (Authorization: Bearer or X-API-Key)."""

    def __init__(self, keys: ApiKeys | None, jwt: JwtVerifier | None):
        self.keys, self.jwt = keys, jwt

    def __call__(self, request: web.Request) -> Principal:
        auth = request.headers.get("Authorization", "")
        bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        if self.jwt is not None:
            self.jwt.maybe_reload()
            if bearer and (self.keys is None or looks_like_jwt(bearer)):
                return self.jwt.authenticate(bearer)
        if self.keys is None:
            raise Unauthorized("missing bearer token (Authorization: Bearer <JWT>)", field="Authorization",
                               headers={"WWW-Authenticate": "Bearer"})
        self.keys.maybe_reload()
        return self.keys.authenticate(bearer or request.headers.get("X-API-Key") or None)


def build_app(cfg: ServingConfig, upstream: Upstream, keys: ApiKeys | None, *, logger: logging.Logger,
              limiter: Limiter | None = None, jwt: JwtVerifier | None = None,
              body_timeout: float = BODY_TIMEOUT_SECONDS) -> web.Application:
    limiter = limiter or Limiter(cfg, logger=logger)
    authenticate = Authenticator(keys, jwt)
    address = ClientAddress(cfg.rate_limit.trusted_proxies)
    max_body = cfg.validation.max_body_bytes

    def on_error(request, exc):
        METRICS.requests.labels("ratelimit", "rejected", exc.reason).inc()
        log_fields(logger, logging.INFO, "rejected", status=exc.status, reason=exc.reason, path=request.path,
                   client=request.get(CLIENT), error=exc.message)  # a client id, never the key

    app = web.Application(middlewares=[error_middleware(on_error)], client_max_size=max_body)
    app.on_startup.append(upstream.start)
    app.on_cleanup.append(upstream.close)

    async def guarded(request: web.Request) -> web.Response:
        t = Timer()
        addr = address(request.remote, request.headers.get("X-Forwarded-For"))
        await limiter.check_address(addr)
        try:
            who = authenticate(request)
        except Unauthorized:
            METRICS.auth_failures.inc()
            await limiter.record_failure(addr)
            raise
        request[CLIENT] = who.client
        rate_headers = await limiter.admit(who)
        body = await read_body(request, max_body, body_timeout) if request.method == "POST" else None
        status, headers, payload = await upstream.forward(request, body, {"X-Client-Id": who.client},
                                                          drop=_SET_HERE)
        METRICS.client_requests.labels(who.client).inc()
        METRICS.requests.labels("ratelimit", "forwarded", str(status)).inc()
        METRICS.latency.labels("ratelimit").observe(t.elapsed())
        upstream_headers = {k.lower(): v for k, v in headers.items()}
        binary = upstream_headers.get("inference-header-content-length")  # a binary response: its JSON's length
        if binary is not None:
            rate_headers = {**rate_headers, "Inference-Header-Content-Length": binary}
        return web.Response(status=status, body=payload, headers=rate_headers,
                            content_type=upstream_headers.get("content-type", "application/json").split(";")[0])

    async def health(request: web.Request) -> web.Response:
        """Probes reach health without a key; everything else needs one."""
        status, _, payload = await upstream.forward(request, None)
        return web.Response(status=status, body=payload, content_type="application/json")

    app.router.add_get("/v2/health/live", health)
    app.router.add_get("/v2/health/ready", health)
    app.router.add_post("/v2/models/{name}/infer", guarded)
    app.router.add_get("/v2/models/{name}", guarded)
    app.router.add_get("/v2/models/{name}/ready", guarded)
    # tritonclient asks for a version in the path when given one (model_version="...")
    app.router.add_post("/v2/models/{name}/versions/{version}/infer", guarded)
    app.router.add_get("/v2/models/{name}/versions/{version}", guarded)
    app.router.add_get("/v2/models/{name}/versions/{version}/ready", guarded)
    app.router.add_get("/v2", guarded)
    return app


async def run(args) -> int:
    from hardened_model.contracts import ServingConfigError, load_serving_config

    from .lifecycle import serve
    from .logs import setup_logging
    from .tls import ReloadingTls

    logger = setup_logging("hardened.ratelimit", args.log_level)
    try:
        cfg = load_serving_config(args.config)
        plans = frozenset(p.name for p in cfg.rate_limit.plans or ())
        keys = jwt = tls = None
        if cfg.auth.api_keys:
            if not args.api_keys:
                raise ValueError("--api-keys: required while auth.apiKeys is on")
            keys = ApiKeys(args.api_keys, plans=plans)
            if not keys.entries:
                raise ValueError(f"{args.api_keys}: no API keys")
        if cfg.auth.jwt is not None:
            if not args.jwks:
                raise ValueError("--jwks: required while auth.jwt is set")
            jwt = JwtVerifier(args.jwks, cfg.auth.jwt, plans=plans)
        if bool(args.tls_cert) != bool(args.tls_key) or (args.client_ca and not args.tls_cert):
            raise ValueError("--tls-cert and --tls-key go together; --client-ca needs them")
        if args.tls_cert:
            tls = ReloadingTls(args.tls_cert, args.tls_key, args.client_ca, logger=logger)
        upstream = Upstream(args.upstream)
        limiter = Limiter(cfg, logger=logger)
        app = build_app(cfg, upstream, keys, logger=logger, limiter=limiter, jwt=jwt,
                        body_timeout=args.body_timeout)
    except (ServingConfigError, ValueError, OSError) as exc:
        log_fields(logger, logging.ERROR, "bad configuration", error=str(exc))
        return 2
    log_fields(logger, logging.INFO, "authentication", api_keys=len(keys.entries) if keys else 0,
               jwt=jwt is not None, jwks_keys=len(jwt.keys) if jwt else 0, tls=tls is not None,
               client_certificates=bool(args.client_ca))

    async def chain_ready() -> bool:
        return await upstream.status_of("/v2/health/ready") == 200

    await serve(app, host=args.host, port=args.port, metrics_host=args.metrics_host,
                metrics_port=args.metrics_port, logger=logger, chain_ready=chain_ready,
                ssl_context=tls.context if tls else None)
    return 0
