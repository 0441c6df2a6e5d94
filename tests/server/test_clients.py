"""Existing inference clients against the real chain (issue 30): tritonclient's HTTP client and the KServe SDK's
InferenceRESTClient, each with its defaults (the binary tensor data extension) and with JSON, one and several
rows, for an image model (digits) and a tabular one (the fraud example's features), through rate-limit ->
validation -> model server on 127.0.0.1."""
import asyncio

import numpy as np
import pytest

from clients_support import fraud_features, fraud_rows, make_tabular_artifact, tabular_serving_config
from helpers import make_artifact, serving_config, start_chain

pytestmark = [pytest.mark.server, pytest.mark.slow]
KEY = "key-" + "c" * 28
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = {"rateLimit": {"perKey": {"requestsPerSecond": 1000, "burst": 1000}}}


@pytest.fixture(scope="module")
def chains(tmp_path_factory, keys):
    tmp = tmp_path_factory.mktemp("clients")
    digits_cfg = serving_config(tmp / "digits.json", {
        **LIMITS, "validation": {"maxBatchSize": 8, "maxBodyBytes": 65536},
        "output": {"mode": "probabilities", "minConfidence": 0.5}})
    fraud_cfg = tabular_serving_config(tmp / "fraud.json", LIMITS)
    (tmp / "d").mkdir()
    (tmp / "f").mkdir()
    d_ports, d_procs = start_chain(tmp / "d", make_artifact(tmp / "digits-artifact", keys[0]), keys[1], digits_cfg,
                                   [KEY])
    procs = list(d_procs)
    try:
        f_ports, f_procs = start_chain(tmp / "f", make_tabular_artifact(tmp / "fraud-artifact", keys[0]), keys[1],
                                       fraud_cfg, [KEY])
        procs += f_procs
        yield {"digits": f"127.0.0.1:{d_ports['rl']}", "fraud": f"127.0.0.1:{f_ports['rl']}", "tmp": tmp}
    finally:
        codes = [p.stop() for p in procs]
    assert codes == [0] * 6, [p.output()[-2000:] for p in procs]
    for sub in ("d", "f"):
        for log in ("model.log", "val.log", "rl.log"):
            text = (tmp / sub / log).read_text()
            assert "Traceback" not in text and "unhandled error" not in text, text[-3000:]


def digits(n):
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[:n] / 16.0).reshape(n, 1, 8, 8).astype(np.float32), [str(v) for v in d.target[:n]]


def named_fraud_inputs(rows: np.ndarray):
    """The one-tensor-per-feature form: categories as their vocabulary strings (BYTES), integers as INT64."""
    out = []
    for j, f in enumerate(fraud_features()):
        col = rows[:, j]
        if f["type"] == "category":
            out.append((f["name"], "BYTES", np.array([f["vocabulary"][int(i)].encode() for i in col], dtype=object)))
        elif f["type"] == "integer":
            out.append((f["name"], "INT64", col.astype(np.int64)))
        else:
            out.append((f["name"], "FP64", col.astype(np.float64)))
    return out


# ------------------------------------------------------------------ tritonclient (HTTP)
def triton(url):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(url=url, connection_timeout=10, network_timeout=10)


def triton_infer(url, model, tensors, *, binary_in=True, binary_out=None, outputs=None, **kwargs):
    import tritonclient.http as httpclient

    inputs = []
    for name, dtype, array in tensors:
        inp = httpclient.InferInput(name, list(array.shape), dtype)
        inp.set_data_from_numpy(array, binary_data=binary_in)
        inputs.append(inp)
    requested = None if outputs is None else [httpclient.InferRequestedOutput(o, binary_data=bool(binary_out))
                                              for o in outputs]
    return triton(url).infer(model, inputs, outputs=requested, headers=dict(AUTH), **kwargs)  # infer() adds to it


class TestTritonHttp:
    def test_health_and_metadata(self, chains):
        client = triton(chains["digits"])
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("digits-demo", headers=AUTH)
        meta = client.get_model_metadata("digits-demo", headers=AUTH)
        assert meta["name"] == "digits-demo" and meta["inputs"][0]["shape"] == [-1, 1, 8, 8]
        assert client.get_server_metadata(headers=AUTH)["extensions"] == ["binary_tensor_data"]
        assert not client.is_model_ready("other-model", headers=AUTH)

    @pytest.mark.parametrize("n", [1, 5])
    def test_defaults_are_binary_both_ways_and_agree_with_json(self, chains, n):
        x, y = digits(n)
        res = triton_infer(chains["digits"], "digits-demo", [("input__0", "FP32", x)])
        assert res.get_response()["outputs"][0]["parameters"]["binary_data_size"] == n * 10 * 4  # raw FP32 came
        probs = res.as_numpy("probabilities")
        assert probs.shape == (n, 10) and probs.dtype == np.float32
        assert [v.decode() for v in res.as_numpy("label")] == y
        assert res.as_numpy("low_confidence").dtype == np.bool_ and not res.as_numpy("low_confidence").any()
        plain = triton_infer(chains["digits"], "digits-demo", [("input__0", "FP32", x)], binary_in=False,
                             binary_out=False, outputs=["probabilities", "label"])
        assert "data" in plain.get_response()["outputs"][0]
        assert [o["name"] for o in plain.get_response()["outputs"]] == ["probabilities", "label"]
        assert np.array_equal(plain.as_numpy("probabilities"), probs)  # float32 exactly, JSON or binary

    def test_fp64_and_a_requested_subset(self, chains):
        x, y = digits(3)
        res = triton_infer(chains["digits"], "digits-demo", [("input", "FP64", x.astype(np.float64))],
                           outputs=["label"], binary_out=True)
        assert [o["name"] for o in res.get_response()["outputs"]] == ["label"]
        assert [v.decode() for v in res.as_numpy("label")] == y

    def test_model_version_in_the_path(self, chains):
        from tritonclient.utils import InferenceServerException

        x, y = digits(2)
        res = triton_infer(chains["digits"], "digits-demo", [("input", "FP32", x)], model_version="0123456789ab")
        assert [v.decode() for v in res.as_numpy("label")] == y
        with pytest.raises(InferenceServerException) as err:
            triton_infer(chains["digits"], "digits-demo", [("input", "FP32", x)], model_version="2")
        assert err.value.status() == "404" and "version '2'" in err.value.message()

    @pytest.mark.parametrize("change, status, text", [
        (lambda x: x * 2, "400", "above the maximum 1.0"),
        (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 3, np.nan, x).astype(np.float32), "400",
         "data holds NaN"),
        (lambda x: np.full_like(x, np.inf), "400", "data holds Infinity"),
        (lambda x: np.concatenate([x] * 9), "400", "batch size 9 exceeds 8"),
    ], ids=["range", "nan", "inf", "batch"])
    def test_bad_binary_tensors_are_refused_naming_the_field(self, chains, change, status, text):
        from tritonclient.utils import InferenceServerException

        x, _ = digits(1)
        with pytest.raises(InferenceServerException) as err:
            triton_infer(chains["digits"], "digits-demo", [("input", "FP32", change(x))])
        assert err.value.status() == status and text in err.value.message(), err.value.message()

    @pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
    def test_compressed_requests_are_refused(self, chains, algorithm):
        from tritonclient.utils import InferenceServerException

        x, _ = digits(1)
        with pytest.raises(InferenceServerException) as err:
            triton_infer(chains["digits"], "digits-demo", [("input", "FP32", x)],
                         request_compression_algorithm=algorithm)
        assert err.value.status() == "415" and "Content-Encoding" in err.value.message()

    def test_tabular_both_forms_binary_and_json_agree(self, chains):
        rows = fraud_rows(4, seed=1)
        one = triton_infer(chains["fraud"], "fraud-tabular", [("x", "FP32", rows.astype(np.float32))])
        named = triton_infer(chains["fraud"], "fraud-tabular", named_fraud_inputs(rows))
        plain = triton_infer(chains["fraud"], "fraud-tabular", named_fraud_inputs(rows), binary_in=False,
                             binary_out=False, outputs=["probabilities", "label"])
        p = one.as_numpy("probabilities")
        assert p.shape == (4, 2) and np.allclose(p.sum(1), 1, atol=2e-3)
        assert np.array_equal(named.as_numpy("probabilities"), p) and np.array_equal(plain.as_numpy("probabilities"), p)
        assert {v.decode() for v in one.as_numpy("label")} <= {"legit", "fraud"}
        big = rows[:1].copy()
        big[0, 0] = 1900.0  # the made-up rule: a large amount is fraud
        assert triton_infer(chains["fraud"], "fraud-tabular", [("x", "FP32", big.astype(np.float32))]).as_numpy(
            "label")[0] == b"fraud"

    def test_tabular_bad_binary_category_names_the_feature(self, chains):
        from tritonclient.utils import InferenceServerException

        tensors = named_fraud_inputs(fraud_rows(1))
        tensors[1] = ("category", "BYTES", np.array([b"crypto"], dtype=object))
        with pytest.raises(InferenceServerException) as err:
            triton_infer(chains["fraud"], "fraud-tabular", tensors)
        assert err.value.status() == "400" and "'crypto' is not in its vocabulary" in err.value.message()


# ------------------------------------------------------------------ KServe SDK (REST, protocol v2)
def kserve_call(method, url, *args, **kwargs):
    from kserve import InferenceRESTClient, RESTConfig

    async def go():
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=10, retries=0))
        try:
            return await getattr(client, method)(f"http://{url}", *args, **kwargs)
        finally:
            await client.close()

    return asyncio.run(go())


def kserve_request(model, tensors, *, binary, name=None, **kwargs):
    from kserve import InferInput, InferRequest

    inputs = []
    for tname, dtype, array in tensors:
        inp = InferInput(tname, list(array.shape), dtype)
        inp.set_data_from_numpy(array, binary_data=binary)
        inputs.append(inp)
    return InferRequest(model_name=name or model, infer_inputs=inputs, **kwargs)


class TestKServeRest:
    def test_health(self, chains):
        assert kserve_call("is_server_live", chains["digits"]) is True
        assert kserve_call("is_server_ready", chains["digits"]) is True
        assert kserve_call("is_model_ready", chains["digits"], "digits-demo", headers=AUTH) is True
        assert kserve_call("is_model_ready", chains["digits"], "digits-demo") is False  # 401 without the key

    @pytest.mark.parametrize("n", [1, 4])
    @pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
    def test_infer_image(self, chains, n, binary):
        x, y = digits(n)
        res = kserve_call("infer", chains["digits"], kserve_request("digits-demo", [("input-0", "FP32", x)],
                                                                    binary=binary), model_name="digits-demo",
                          headers=dict(AUTH))
        assert res.model_name == "digits-demo"
        out = {o.name: o for o in res.outputs}
        assert out["probabilities"].as_numpy().shape == (n, 10)
        assert list(out["label"].data) == y

    def test_binary_outputs_when_asked(self, chains):
        x, y = digits(2)
        req = kserve_request("digits-demo", [("input-0", "FP32", x)], binary=True,
                             parameters={"binary_data_output": True})
        headers = {}
        res = kserve_call("infer", chains["digits"], req, model_name="digits-demo", headers=dict(AUTH),
                          response_headers=headers)
        assert headers["content-type"] == "application/octet-stream" and int(headers["inference-header-content-length"])
        out = {o.name: o for o in res.outputs}
        assert [v.decode() if isinstance(v, bytes) else v for v in out["label"].as_numpy()] == y

    def test_model_name_in_the_body_must_match_the_path(self, chains):
        import httpx

        x, _ = digits(1)
        with pytest.raises(httpx.HTTPStatusError) as err:
            kserve_call("infer", chains["digits"], kserve_request("digits-demo", [("input-0", "FP32", x)], binary=True,
                                                                  name="fraud-tabular"),
                        model_name="digits-demo", headers=dict(AUTH))
        assert err.value.response.status_code == 400
        assert err.value.response.json() == {"error": "model_name 'fraud-tabular' does not match the 'digits-demo' "
                                                      "of the request path", "field": "model_name"}

    @pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
    def test_infer_tabular(self, chains, binary):
        rows = fraud_rows(3, seed=2)
        one = kserve_call("infer", chains["fraud"], kserve_request("fraud-tabular", [("x", "FP32", rows.astype(
            np.float32))], binary=binary), model_name="fraud-tabular", headers=dict(AUTH))
        named = kserve_call("infer", chains["fraud"], kserve_request("fraud-tabular", named_fraud_inputs(rows),
                                                                     binary=binary),
                            model_name="fraud-tabular", headers=dict(AUTH))
        a, b = ({o.name: o for o in r.outputs} for r in (one, named))
        assert a["probabilities"].as_numpy().shape == (3, 2)
        assert np.array_equal(a["probabilities"].as_numpy(), b["probabilities"].as_numpy())
        assert list(a["label"].data) == list(b["label"].data)
