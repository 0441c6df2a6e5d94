"""The in-process measurements that the serving code's comments cite, side by side, in one run.

1. A rate-limit hit: limits' asyncio memory storage against its synchronous one called inline (one key,
   20,000 hits in an event loop, yielding between hits as between requests). CPU per hit.
2. JSON for the one-digit request (477 bytes): json.loads against orjson.loads, and encoding the forwarded
   request with json.dumps(tolist()) against orjson with the numpy array.
3. The model server: one forward pass of the digits model (cnn-8x8) at batch 1 and 8 with 2 torch threads
   (the default on 2 cores) and 1, against a hand-off to a worker thread and back (a no-op in an executor).
4. A full garbage collection after the sidecars' imports and after the model server's, before and after
   gc.freeze() (each in a fresh interpreter).

    .venv/bin/python benchmarks/serving_micro.py [--smoke]
"""
import asyncio
import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import timeit

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
HITS, FORWARDS = 20000, 2000  # loop sizes; --smoke divides them by 100


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def limiter_hits() -> None:
    n = HITS
    from limits import RateLimitItemPerSecond, aio, strategies
    from limits.storage import MemoryStorage, storage_from_string

    item = RateLimitItemPerSecond(100000, 1)

    async def run(inline: bool) -> float:
        limiter = (strategies.MovingWindowRateLimiter(MemoryStorage()) if inline
                   else aio.strategies.MovingWindowRateLimiter(storage_from_string("async+memory://")))
        start = cpu()
        for _ in range(n):
            if inline:
                limiter.hit(item, "ns", "key", "abc")
            else:
                await limiter.hit(item, "ns", "key", "abc")
            await asyncio.sleep(0)
        return (cpu() - start) / n * 1e6

    print(f"limits hit, asyncio memory storage: {asyncio.run(run(False)):6.1f} us CPU")
    print(f"limits hit, synchronous, inline:    {asyncio.run(run(True)):6.1f} us CPU")


def best(f, n: int | None = None) -> float:
    n = n or HITS
    return min(timeit.repeat(f, number=n, repeat=3)) / n * 1e6


def json_costs() -> None:
    import orjson
    from sklearn.datasets import load_digits

    from helpers import infer_body

    x = (load_digits().images[:1] / 16.0).reshape(1, 1, 8, 8).astype(np.float32)
    body = json.dumps(infer_body(x)).encode()
    doc = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32"}]}
    print(f"parse {len(body)}-byte request: json.loads {best(lambda: json.loads(body)):5.1f} us, "
          f"orjson.loads {best(lambda: orjson.loads(body)):5.1f} us")
    enc_json = best(lambda: json.dumps({**doc, "data": x.reshape(-1).tolist()}, separators=(",", ":")).encode())
    enc_orjson = best(lambda: orjson.dumps({**doc, "data": x.reshape(-1)}, option=orjson.OPT_SERIALIZE_NUMPY))
    print(f"encode forwarded request: json.dumps {enc_json:5.1f} us, orjson {enc_orjson:5.1f} us")


def forward_and_hop() -> None:
    import torch

    from hardened_model.signing import TrustPolicy, generate_key_pair
    from hardened_server.model_server import load_verified
    from helpers import make_artifact

    tmp = pathlib.Path(tempfile.mkdtemp())
    private, public = generate_key_pair(tmp / "keys")
    artifact = make_artifact(tmp / "artifact", private)
    model = load_verified(artifact / "model", artifact / "model.sig", TrustPolicy(public_key=str(public)))
    for threads in (2, 1):  # torch's default here is 2, the machine's cores
        torch.set_num_threads(threads)
        for rows in (1, 8):
            x = np.random.default_rng(0).random((rows, 1, 8, 8)).astype(np.float32)
            start, wall = cpu(), best(lambda: model.predict(x), FORWARDS)
            used = (cpu() - start) / (3 * FORWARDS) * 1e6
            print(f"forward pass, {threads} torch threads, batch {rows}: {wall:6.1f} us wall, {used:6.1f} us CPU")
    executor = concurrent.futures.ThreadPoolExecutor(1)

    async def hops() -> float:
        n, loop, start = HITS, asyncio.get_running_loop(), cpu()
        for _ in range(n):
            await loop.run_in_executor(executor, int)
        return (cpu() - start) / n * 1e6
    print(f"hand-off to a worker thread and back: {asyncio.run(hops()):6.1f} us CPU")


GC_PROBE = """
import gc, importlib, sys, time
for m in sys.argv[1:]:
    importlib.import_module(m)
def full():
    out = []
    for _ in range(5):
        t = time.perf_counter(); gc.collect(); out.append(time.perf_counter() - t)
    return min(out) * 1000
objects, before = len(gc.get_objects()), full()
gc.freeze()
print(f"{objects:7d} objects: full collection {before:6.1f} ms, after gc.freeze() {full():5.2f} ms")
"""


def gc_pauses() -> None:
    for name, modules in [("sidecars", ["hardened_server.validation", "hardened_server.ratelimit"]),
                          ("model server", ["hardened_server.model_server", "torch", "safetensors",
                                            "hardened_model.networks"])]:
        out = subprocess.run([sys.executable, "-c", GC_PROBE, *modules], capture_output=True, text=True, check=True)
        print(f"gc, {name:12s} {out.stdout.strip()}")


if __name__ == "__main__":
    from common import smoke_parser

    if smoke_parser(__doc__.split("\n\n")[0]).parse_args().smoke:
        HITS, FORWARDS = HITS // 100, FORWARDS // 100
    limiter_hits()
    json_costs()
    forward_and_hop()
    gc_pauses()
