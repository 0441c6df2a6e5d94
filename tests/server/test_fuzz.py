"""Fuzzing the rate-limit and validation sidecars with generated requests (tests/server/fuzz.py), on the real
processes. CI runs FUZZ_REQUESTS (default 100,000) cases; docs/benchmarks.md records a long run."""
import asyncio
import os
import re

import pytest

from fuzz import Fuzzer, raw_requests, run, slow_bodies
from helpers import make_artifact, serving_config, start_chain

pytestmark = [pytest.mark.server, pytest.mark.slow]
KEY = "key-" + "f" * 28
N = int(os.environ.get("FUZZ_REQUESTS", "100000"))
BODY_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def chain(tmp_path_factory, keys):
    tmp = tmp_path_factory.mktemp("fuzz")
    artifact = make_artifact(tmp / "artifact", keys[0])
    # limits high enough that the fuzz load itself is never rate limited, nor its wrong keys' address throttled
    # (429s and failed-authentication budgets are tested elsewhere)
    cfg = serving_config(tmp / "serving.json", {
        "validation": {"maxBatchSize": 4, "maxBodyBytes": 8192, "oodThreshold": 50.0},
        "rateLimit": {"perKey": {"requestsPerSecond": 100000, "burst": 100000},
                      "failedAuth": {"requestsPerSecond": 100000, "burst": 100000}}})
    ports, procs = start_chain(tmp, artifact, keys[1], cfg, [KEY], "--body-timeout", str(BODY_TIMEOUT))
    yield {"ports": ports, "procs": procs, "tmp": tmp}
    assert [p.stop() for p in procs] == [0, 0, 0], [p.output()[-2000:] for p in procs]


def test_generated_requests_never_crash_or_5xx_and_every_rejection_names_its_field(chain):
    ports = chain["ports"]
    fuzzer = Fuzzer(seed=20261122, shape=[1, 8, 8], max_batch=4, max_body=8192, key=KEY)
    urls = [f"http://127.0.0.1:{ports['rl']}", f"http://127.0.0.1:{ports['val']}"]
    report = asyncio.run(run(urls, model="digits-demo", fuzzer=fuzzer, n=N))
    print("fuzz:", report.summary())
    assert report.sent == N
    assert report.violations == [], "\n".join(report.violations[:30])
    assert all(p.proc.poll() is None for p in chain["procs"]), "a sidecar died"
    assert len(report.by_kind) >= 30  # every mutation family and its variants ran
    binary = {k for k in report.by_kind if k.startswith("binary/")}
    assert len(binary) >= 12, binary  # the binary tensor data extension's variants (issue 30)
    assert report.by_status[200] > N * 0.05 and report.by_status[400] > N * 0.3
    for name in ("val.log", "rl.log"):
        log = (chain["tmp"] / name).read_text()
        assert "unhandled error" not in log and "Traceback" not in log and KEY not in log


def test_slow_bodies_get_408_and_do_not_hold_the_sidecars(chain):
    ports = chain["ports"]
    for port in (ports["rl"], ports["val"]):
        problems = asyncio.run(slow_bodies("127.0.0.1", port, count=8, path="/v2/models/digits-demo/infer",
                                           key=KEY, body_timeout=BODY_TIMEOUT))
        assert problems == []


def test_malformed_http_is_answered_400_by_the_parser(chain):
    for port in (chain["ports"]["rl"], chain["ports"]["val"]):
        answers = asyncio.run(raw_requests("127.0.0.1", port))
        for raw, line in answers:
            assert re.match(rb"HTTP/1\.[01] 4\d\d ", line), (raw, line)
