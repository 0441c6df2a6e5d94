"""Limiter state is bounded by the key file and the callers' addresses, whatever clients send (in-process, real
aiohttp servers)."""
import secrets

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from hardened_model.contracts import load_serving_config
from hardened_server.logs import setup_logging
from hardened_server.proxy import Upstream
from hardened_server.ratelimit import ApiKeys, Limiter, build_app
from helpers import serving_config

KEYS = ["key-" + "a" * 28, "key-" + "b" * 28]


async def ok(_):
    return web.json_response({"ok": True})


async def test_unknown_keys_leave_no_state_and_known_keys_one_each(tmp_path):
    upstream_app = web.Application()
    upstream_app.router.add_post("/v2/models/{name}/infer", ok)
    async with TestServer(upstream_app) as upstream:
        cfg = load_serving_config(str(serving_config(tmp_path / "s.json", {"rateLimit": {
            "perKey": {"requestsPerSecond": 1000, "burst": 1000},
            "global": {"requestsPerSecond": 100000, "burst": 100000},
            "failedAuth": {"requestsPerSecond": 100000, "burst": 100000}}})))
        (tmp_path / "keys").write_text("\n".join(KEYS) + "\n")
        limiter = Limiter(cfg)
        app = build_app(cfg, Upstream(str(upstream.make_url("/"))), ApiKeys(str(tmp_path / "keys")),
                        logger=setup_logging("test"), limiter=limiter)
        async with TestClient(TestServer(app)) as client:
            for _ in range(3000):  # 3,000 distinct unknown keys
                resp = await client.post("/v2/models/digits-demo/infer", data=b"{}",
                                         headers={"Authorization": f"Bearer {secrets.token_hex(16)}"})
                assert resp.status == 401
            # the only state: the failed-authentication window of the one calling address
            assert list(limiter.storage.events) == ["LIMITER/digits-demo/failed/127.0.0.1/100000/1/second"]
            assert not limiter.storage.storage
            for i in range(200):
                resp = await client.post("/v2/models/digits-demo/infer", data=b"{}",
                                         headers={"X-API-Key": KEYS[i % 2]})
                assert resp.status == 200
            assert len(limiter.storage.events) == 4  # the address's, one window per key id, the global one
            assert all(KEYS[0] not in k and KEYS[1] not in k for k in limiter.storage.events)
