"""Properties of the rate-limit sidecar's token buckets (Limiter.admit) under any arrival pattern.

The buckets are limits' moving windows over limits' in-memory storage, which reads ``time.time()``; both it
and the limiter read a fake clock here, so hypothesis can draw arrivals milliseconds or minutes apart and a run
takes no wall time. What must hold is what the spec promises a client (rate r, burst b): in any stretch of T
seconds at most r*T + b of its requests are admitted, whatever anyone else sends; and the limiter does not
refuse for ever, so a refuse-all limiter cannot pass.
"""
import asyncio
import math
from unittest import mock

import limits.storage.memory
from hypothesis import example as pinned, given, settings, strategies as st

import hardened_server.ratelimit as ratelimit
from hardened_model.contracts import ServingConfig, build_serving_config
from hardened_model.spec import parse_manifest
from hardened_server.auth import Principal
from hardened_server.errors import TooManyRequests
from helpers import example

START = 1_800_000_000.0  # a wall-clock time; the fake clock counts from it
KEYS = ("alice", "bob", "carol")
BASE = build_serving_config(parse_manifest(example("digits-demo")))


class FakeClock:
    """Stands in for the ``time`` module in limits' memory storage and in the limiter."""

    def __init__(self):
        self.now = START

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now - START


def config(default: tuple[float, float], gold: tuple[float, float]) -> ServingConfig:
    doc = {**BASE, "rateLimit": {**BASE["rateLimit"], "storage": "memory://",
                                 "perKey": {"requestsPerSecond": default[0], "burst": default[1]},
                                 "plans": [{"name": "gold", "requestsPerSecond": gold[0], "burst": gold[1]}]}}
    doc["rateLimit"].pop("global", None)  # a global bucket couples the keys on purpose
    return ServingConfig.model_validate(doc)


def run(cfg: ServingConfig, arrivals: list[tuple[int, str]], plans: dict[str, str | None]) -> list[bool]:
    """Offer each (millisecond, key) to a fresh limiter at that fake time; whether each was admitted."""
    clock = FakeClock()

    async def offer() -> list[bool]:
        limiter = ratelimit.Limiter(cfg)
        admitted = []
        for ms, key in arrivals:
            clock.now = START + ms / 1000
            try:
                await limiter.admit(Principal(key, plans[key]))
                admitted.append(True)
            except TooManyRequests:
                admitted.append(False)
        return admitted

    with mock.patch.object(limits.storage.memory, "time", clock), mock.patch.object(ratelimit, "time", clock):
        return asyncio.run(offer())


buckets = st.floats(0.2, 12.0).flatmap(lambda rate: st.tuples(st.just(rate), st.floats(max(1.0, rate), 12.0)))
# Gaps near whole seconds, where windows of whole seconds begin and end, are where an off-by-one over-admits.
gaps = st.one_of(st.integers(0, 40), st.integers(0, 4000),
                 st.integers(1, 4).flatmap(lambda s: st.integers(1000 * s - 2, 1000 * s + 2)))
# a step: after a gap, one key sends a clump of requests, 1 ms apart (bursts, trickles and pauses)
traffic = st.lists(st.tuples(gaps, st.sampled_from(KEYS), st.integers(1, 8)), min_size=1, max_size=16)


def timeline(steps: list[tuple[int, str, int]]) -> list[tuple[int, str]]:
    out, ms = [], 0
    for gap, key, clump in steps:
        ms += gap
        for _ in range(clump):
            out.append((ms, key))
            ms += 1
    return out


@settings(max_examples=100, deadline=None)
# Two edges hypothesis finds only now and then, pinned: a window of floor(burst / rate) seconds instead of
# ceil admits 8 in 1 s at rate 3, burst 4; a fixed window admits 2 on each side of its end, 3 within 3 ms.
@pinned(default=(3.0, 4.0), gold=(1.0, 1.0), steps=[(0, "alice", 8), (997, "alice", 8)], gold_keys=set())
@pinned(default=(2.0, 2.0), gold=(1.0, 1.0), steps=[(0, "alice", 1), (997, "alice", 4)], gold_keys=set())
@given(default=buckets, gold=buckets, steps=traffic, gold_keys=st.sets(st.sampled_from(KEYS)))
def test_no_key_is_admitted_more_than_rate_times_time_plus_burst_and_keys_do_not_affect_each_other(
        default, gold, steps, gold_keys):
    cfg = config(default, gold)
    plans = {k: "gold" if k in gold_keys else None for k in KEYS}
    arrivals = timeline(steps)
    admitted = run(cfg, arrivals, plans)
    for key in KEYS:
        rate, burst = gold if plans[key] else default
        times = [ms / 1000 for (ms, k), ok in zip(arrivals, admitted) if k == key and ok]
        # the fullest windows start and end at admitted requests: check every such window
        for i in range(len(times)):
            for j in range(i, len(times)):
                assert j - i + 1 <= rate * (times[j] - times[i]) + burst + 1e-6, (key, rate, burst, times[i:j + 1])
        # not refusing for ever: after a documented window (ceil(burst / rate) s) with nothing admitted, the
        # next request of the key is admitted
        window = max(1, math.ceil(burst / rate))
        last = None
        for (ms, k), ok in zip(arrivals, admitted):
            if k != key:
                continue
            if last is None or ms / 1000 - last > window:
                assert ok, (key, ms, last, window)
            if ok:
                last = ms / 1000
        # the same key's requests alone, no one else sending, get the same answers
        alone = [(ms, k) for ms, k in arrivals if k == key]
        assert run(cfg, alone, plans) == [ok for (_, k), ok in zip(arrivals, admitted) if k == key], key
