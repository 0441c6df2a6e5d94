"""The real chain on loopback ports: client -> rate-limit -> validation -> model server."""
import json
import shutil
import time

import numpy as np
import pytest

from helpers import (Process, free_port, http, infer_body, make_artifact, ratelimit_sidecars, serving_config,
                     start_chain)

pytestmark = pytest.mark.server
KEY = "key-" + "a" * 28
OTHER_KEY = "key-" + "b" * 28


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, keys):
    return make_artifact(tmp_path_factory.mktemp("artifact"), keys[0])


@pytest.fixture(scope="module")
def chain(tmp_path_factory, artifact, keys):
    tmp = tmp_path_factory.mktemp("chain")
    cfg = serving_config(tmp / "serving.json", {
        "validation": {"maxBatchSize": 4, "maxBodyBytes": 4096, "oodThreshold": 3.0},
        "rateLimit": {"perKey": {"requestsPerSecond": 5, "burst": 10}},
        "output": {"mode": "rounded", "decimals": 2, "minConfidence": 0.5}})
    ports, procs = start_chain(tmp, artifact, keys[1], cfg, [KEY, OTHER_KEY])
    yield {"url": f"http://127.0.0.1:{ports['rl']}", "ports": ports, "procs": procs, "tmp": tmp}
    codes = [p.stop() for p in procs]
    assert codes == [0, 0, 0], [p.output() for p in procs]  # SIGTERM: graceful, clean exit


def digits(n=2):
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[:n] / 16.0).reshape(n, 1, 8, 8), d.target[:n]


def infer(chain, body, key=KEY, **headers):
    hdrs = {"Authorization": f"Bearer {key}"} if key else {}
    return http("POST", chain["url"] + "/v2/models/digits-demo/infer", body, {**hdrs, **headers})


def wait_for_tokens(seconds=2.2):
    time.sleep(seconds)  # the 5 rps / burst 10 bucket is a 10-per-2s window


class TestValid:
    def test_valid_request_gets_a_prediction(self, chain):
        x, y = digits(3)
        status, body, _ = infer(chain, infer_body(x))
        assert status == 200, body
        outputs = {o["name"]: o for o in body["outputs"]}
        assert outputs["label"]["data"] == [str(v) for v in y]
        assert outputs["probabilities"]["shape"] == [3, 10]
        assert all(round(v, 2) == v for v in outputs["probabilities"]["data"])  # rounded mode
        assert outputs["low_confidence"]["data"] == [False, False, False]
        assert "parameters" not in body

    def test_health_needs_no_key_metadata_does(self, chain):
        assert http("GET", chain["url"] + "/v2/health/ready")[0] == 200
        assert http("GET", chain["url"] + "/v2/models/digits-demo")[0] == 401
        status, meta, _ = http("GET", chain["url"] + "/v2/models/digits-demo", headers={"X-API-Key": KEY})
        assert status == 200 and meta["inputs"][0]["shape"] == [-1, 1, 8, 8]


BAD = [
    ("not json", b"{inputs", 400, "body"),
    ("NaN token", json.dumps(infer_body(np.zeros((1, 1, 8, 8)))).replace("0.0", "NaN", 1).encode(), 400, "body"),
    ("number beyond a double", json.dumps(infer_body(np.zeros((1, 1, 8, 8)))).replace("0.0", "1e999", 1).encode(),
     400, "body"),
    ("wrong shape", infer_body(np.zeros((1, 1, 8, 9))), 400, "inputs[0].shape"),
    ("batch over the limit", infer_body(np.zeros((5, 1, 8, 8))), 400, "inputs[0].shape"),
    ("wrong datatype", {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "INT64",
                                    "data": [0] * 64}]}, 400, "inputs[0].datatype"),
    ("value out of range", infer_body(np.full((1, 1, 8, 8), 2.0)), 400, "inputs[0].data"),
    ("strings as data", {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                     "data": ["x"] * 64}]}, 400, "inputs[0].data"),
    ("out of distribution", infer_body(np.random.default_rng(0).random((1, 1, 8, 8))), 400, "inputs[0].data"),
    ("body too large", b"[" + b"0," * 3000 + b"0]", 413, "body"),
]


@pytest.mark.parametrize("name, body, status, field", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_the_right_4xx(chain, name, body, status, field):
    wait_for_tokens(0.25)
    got, err, _ = infer(chain, body)
    assert (got, err.get("field")) == (status, field), err
    assert err["error"]


def binary_body(x, dtype="<f4", datatype="FP32", size=None, tail=b"", **doc):
    raw = np.ascontiguousarray(x, dtype).tobytes()
    head = json.dumps({"inputs": [{"name": "input__0", "shape": list(x.shape), "datatype": datatype, "parameters": {
        "binary_data_size": len(raw) if size is None else size}}], **doc}).encode()
    return head + raw + tail, {"Inference-Header-Content-Length": str(len(head)),
                               "Content-Type": "application/octet-stream"}


def test_binary_request_and_response_through_the_chain(chain):
    import urllib.request

    wait_for_tokens(0.25)
    x, y = digits(3)
    body, headers = binary_body(x, parameters={"binary_data_output": True}, model_name="digits-demo")
    req = urllib.request.Request(chain["url"] + "/v2/models/digits-demo/infer", data=body, method="POST",
                                 headers={**headers, "Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        raw, n, ctype = r.read(), int(r.headers["Inference-Header-Content-Length"]), r.headers["Content-Type"]
    head = json.loads(raw[:n])
    assert ctype == "application/octet-stream" and head["model_name"] == "digits-demo"
    sizes = {o["name"]: o["parameters"]["binary_data_size"] for o in head["outputs"]}
    assert sizes["probabilities"] == 3 * 10 * 4 and n + sum(sizes.values()) == len(raw)
    probs = np.frombuffer(raw[n:n + sizes["probabilities"]], "<f4").reshape(3, 10)
    assert [str(v) for v in probs.argmax(1)] == [str(v) for v in y]
    assert all(round(float(v), 2) == round(float(v), 6) for v in probs.reshape(-1))  # still rounded mode


ZERO = np.zeros((1, 1, 8, 8))
BAD_BINARY = [
    ("declared size disagrees with the shape", binary_body(ZERO, size=200), 400,
     "inputs[0].parameters.binary_data_size"),
    ("truncated tensor", (binary_body(ZERO)[0][:-10], binary_body(ZERO)[1]), 400,
     "inputs[0].parameters.binary_data_size"),
    ("bytes beyond the declared sizes", binary_body(ZERO, tail=b"\0" * 4), 400, "inputs[0].parameters.binary_data_size"),
    ("header length beyond the body", (binary_body(ZERO)[0], {"Inference-Header-Content-Length": "99999"}), 400,
     "Inference-Header-Content-Length"),
    ("header length not a number", (binary_body(ZERO)[0], {"Inference-Header-Content-Length": "12a"}), 400,
     "Inference-Header-Content-Length"),
    ("octet-stream without the header", (binary_body(ZERO)[0], {"Content-Type": "application/octet-stream"}), 400,
     "Inference-Header-Content-Length"),
    ("FP64 bytes declared FP32", binary_body(ZERO, dtype="<f8"), 400, "inputs[0].parameters.binary_data_size"),
    ("INT8 tensor", binary_body(ZERO, dtype="i1", datatype="INT8"), 400, "inputs[0].datatype"),
    ("NaN in binary", binary_body(np.full((1, 1, 8, 8), np.nan)), 400, "inputs[0].data"),
    ("out of range in binary", binary_body(np.full((1, 1, 8, 8), 5.0)), 400, "inputs[0].data"),
    ("batch over the limit", binary_body(np.zeros((5, 1, 8, 8))), 400, "inputs[0].shape"),
    ("model_name of another model", binary_body(ZERO, model_name="other"), 400, "model_name"),
    ("oversized binary body", binary_body(np.zeros((2, 1, 8, 8, 9))), 413, "body"),
    ("gzip-encoded", (binary_body(ZERO)[0], {**binary_body(ZERO)[1], "Content-Encoding": "gzip"}), 415,
     "Content-Encoding"),
    ("compressed header", (binary_body(ZERO)[0], {**binary_body(ZERO)[1],
                                                  "Inference-Header-Content-Encoding": "deflate"}), 415,
     "Inference-Header-Content-Encoding"),
]


@pytest.mark.parametrize("name, request_, status, field", BAD_BINARY, ids=[b[0] for b in BAD_BINARY])
def test_bad_binary_input_gets_the_right_4xx(chain, name, request_, status, field):
    wait_for_tokens(0.25)
    body, headers = request_
    got, err, _ = infer(chain, body, **headers)
    assert (got, err.get("field")) == (status, field), err
    assert err["error"]


def test_chunked_body_over_the_limit_is_413(chain):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", chain["ports"]["rl"], timeout=10)
    conn.putrequest("POST", "/v2/models/digits-demo/infer")
    conn.putheader("Authorization", f"Bearer {KEY}")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    try:
        for _ in range(10):  # 10 x 1 KiB, no Content-Length: the limit is enforced while streaming
            conn.send(b"400\r\n" + b" " * 1024 + b"\r\n")
        conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["field"] == "body"


def test_missing_and_unknown_keys_are_401(chain):
    assert infer(chain, infer_body(digits(1)[0]), key=None)[:2] == (401, {
        "error": "missing API key (Authorization: Bearer <key> or X-API-Key)", "field": "Authorization"})
    assert infer(chain, infer_body(digits(1)[0]), key="key-" + "z" * 28)[0] == 401


def test_over_the_rate_is_429_then_recovers(chain):
    wait_for_tokens()
    x, _ = digits(1)
    statuses = [infer(chain, infer_body(x), key=OTHER_KEY) for _ in range(14)]
    codes = [s[0] for s in statuses]
    assert codes[:10] == [200] * 10 and set(codes[10:]) == {429}, codes
    assert 1 <= int(statuses[-1][2]["Retry-After"]) <= 2
    assert statuses[-1][1]["field"] == "Authorization"
    assert infer(chain, infer_body(x), key=KEY)[0] == 200  # other keys have their own bucket
    wait_for_tokens()
    assert infer(chain, infer_body(x), key=OTHER_KEY)[0] == 200


def test_metrics_count_outcomes_and_never_show_keys(chain):
    from urllib.request import urlopen

    texts = {n: urlopen(f"http://127.0.0.1:{chain['ports'][n]}/metrics").read().decode()
             for n in ("model_m", "val_m", "rl_m")}
    assert 'hardened_requests_total{component="validation",outcome="rejected",reason="invalid_input"}' in texts["val_m"]
    assert 'hardened_requests_total{component="ratelimit",outcome="rejected",reason="unauthorized"}' in texts["rl_m"]
    assert 'hardened_rate_limited_total{scope="key"}' in texts["rl_m"]
    assert "hardened_model_info{" in texts["model_m"] and "hardened_model_verified 1.0" in texts["model_m"]
    assert "hardened_request_duration_seconds_bucket" in texts["val_m"]
    logs = "".join(p.output() for p in chain["procs"])
    for secret in (KEY, OTHER_KEY):
        assert secret not in logs and all(secret not in t for t in texts.values())
        assert secret[4:12] not in logs
    # traffic port does not serve metrics
    assert http("GET", chain["url"] + "/metrics")[0] == 404


def test_two_rate_limit_processes_share_one_global_limit_in_redis(tmp_path, chain, redis_url):
    cfg = serving_config(tmp_path / "serving.json", {
        "rateLimit": {"perKey": {"requestsPerSecond": 100, "burst": 100},
                      "global": {"requestsPerSecond": 3, "burst": 6}, "storage": redis_url}})
    ports, procs = ratelimit_sidecars(tmp_path, cfg, f"http://127.0.0.1:{chain['ports']['val']}", KEY, 2)
    try:
        x, _ = digits(1)
        codes = [http("POST", f"http://127.0.0.1:{ports[i % 2]}/v2/models/digits-demo/infer", infer_body(x),
                      {"Authorization": f"Bearer {KEY}"})[0] for i in range(12)]
        assert codes.count(200) == 6 and codes.count(429) == 6, codes  # one bucket of 6, not 6 per replica
    finally:
        assert [p.stop() for p in procs] == [0, 0]


def test_tampered_model_is_refused_at_verify_and_at_load(tmp_path, artifact, keys):
    bad = tmp_path / "bad"
    shutil.copytree(artifact, bad)
    blob = bytearray((bad / "model/model.safetensors").read_bytes())
    blob[-3] ^= 0xFF
    (bad / "model/model.safetensors").write_bytes(bytes(blob))

    verify = Process("verify", "--artifact", str(bad), "--public-key", str(keys[1]), log=tmp_path / "verify.log")
    assert verify.wait() == 3
    result = json.loads(verify.output().splitlines()[0])
    assert result["verified"] is False
    assert result["reason"] == "files changed after signing (sha256 mismatch): model.safetensors"

    port = free_port()
    server = Process("serve", "--artifact", str(bad), "--public-key", str(keys[1]), "--port", str(port),
                     "--metrics-port", str(free_port()), log=tmp_path / "serve.log")
    assert server.wait() == 3
    assert "refusing to serve" in server.output() and "model.safetensors" in server.output()


def test_verify_checks_gates_and_pinned_digest(tmp_path, artifact, keys):
    base = ["verify", "--artifact", str(artifact), "--public-key", str(keys[1])]
    ok = Process(*base, "--gates", '{"minCleanAccuracy": 0.9, "maxEpsilon": 8}', log=tmp_path / "ok.log")
    assert ok.wait() == 0
    good = json.loads(ok.output().splitlines()[0])
    assert good["verified"] and good["gatesPassed"] and good["metrics"]["epsilon"] == 7.5
    failing = Process(*base, "--gates", '{"minRobustAccuracy": 0.9}', log=tmp_path / "gate.log")
    assert failing.wait() == 3
    assert "gates failed: minRobustAccuracy: 0.6000 (FAILED, threshold 0.9)" in failing.output()
    pinned = Process(*base, "--expect-digest", "0" * 64, log=tmp_path / "pin.log")
    assert pinned.wait() == 3 and f"is not the pinned {'0' * 64}" in pinned.output()
    wrong_key = Process("verify", "--artifact", str(artifact), "--identity", "ci@example.com", "--oidc-issuer",
                        "https://token.actions.githubusercontent.com", log=tmp_path / "keyless.log")
    assert wrong_key.wait() == 3  # a key-signed bundle fails a keyless policy (offline trust root)
    assert "expected certificate in bundle" in wrong_key.output()


def test_a_model_signed_by_another_key_is_refused_at_verify_and_at_load(tmp_path, artifact, keys):
    """Wrong signer: a correctly signed artifact, but not by the key the trust policy names."""
    from hardened_model.signing import generate_key_pair

    _, stranger_public = generate_key_pair(tmp_path / "stranger")
    verify = Process("verify", "--artifact", str(artifact), "--public-key", str(stranger_public),
                     log=tmp_path / "verify.log")
    assert verify.wait() == 3
    result = json.loads(verify.output().splitlines()[0])
    assert result["verified"] is False and "signature" in result["reason"].lower()
    server = Process("serve", "--artifact", str(artifact), "--public-key", str(stranger_public), "--port",
                     str(free_port()), "--metrics-port", str(free_port()), log=tmp_path / "serve.log")
    assert server.wait() == 3 and "refusing to serve" in server.output()
