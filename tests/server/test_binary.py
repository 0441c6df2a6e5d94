"""The binary tensor data extension and the fields real clients put in the body (issue 30), at the parser: every
decoded tensor meets the JSON checks, every size that disagrees with the body is a 400 naming the input."""
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hardened_server.binary import HEADER, encode_strings
from hardened_server.errors import InvalidInput
from hardened_server.protocol import (Envelope, Limits, encode_request, encode_response, parse_infer_request,
                                      select_outputs)
from hardened_server.tabular import TabularSchema

SHAPE = [1, 8, 8]
LIMITS = Limits(max_batch_size=4, min_value=0.0, max_value=1.0)


def binary(x: np.ndarray, dtype="FP32", *, size=None, shape=None, extra=b"", params=None, **doc):
    raw = x.tobytes()
    tensor = {"name": "input__0", "shape": shape or list(x.shape), "datatype": dtype,
              "parameters": {"binary_data_size": len(raw) if size is None else size, **(params or {})}}
    head = json.dumps({"inputs": [tensor], **doc}).encode()
    return head + raw + extra, str(len(head))


def parse(body, header, **kw):
    return parse_infer_request(body, input_shape=SHAPE, limits=LIMITS, header=header, model="digits", **kw)


def reject(body, header, field, match, **kw):
    with pytest.raises(InvalidInput, match=match) as err:
        parse(body, header, **kw)
    assert err.value.field == field and err.value.status == 400, (err.value.field, err.value.message)


X = np.full((2, *SHAPE), 0.25, np.float32)


def test_binary_fp32_and_fp64_decode_to_what_json_gives():
    req = parse(*binary(X))
    assert req.x.dtype == np.float32 and np.array_equal(req.x, X) and req.envelope.binary_input
    assert np.array_equal(parse(*binary(X.astype(np.float64), "FP64")).x, X)
    as_json = json.dumps({"inputs": [{"name": "i", "shape": [2, *SHAPE], "datatype": "FP32",
                                      "data": X.reshape(-1).tolist()}]}).encode()
    assert np.array_equal(parse(as_json, None).x, req.x) and not parse(as_json, None).envelope.binary_input


FIELD = "inputs[0].parameters.binary_data_size"


@pytest.mark.parametrize("make, field, match", [
    (lambda: (binary(X)[0], "abc"), HEADER, "whole number of bytes, got 'abc'"),
    (lambda: (binary(X)[0], "-5"), HEADER, "whole number"),
    (lambda: (binary(X)[0], "0"), HEADER, "is 0, but the body holds"),
    (lambda: (binary(X)[0], "99999999"), HEADER, "is 99999999, but the body holds"),
    (lambda: (binary(X)[0], "1" * 40), HEADER, "whole number"),
    (lambda: binary(X, size=500), FIELD, r"binary_data_size 500 does not fit shape \[2, 1, 8, 8\] of FP32, which needs 512"),
    (lambda: (binary(X)[0][:-7], binary(X)[1]), FIELD, "runs past the 505 bytes after the JSON header"),
    (lambda: binary(X, extra=b"\0" * 8), FIELD, "8 bytes follow the last binary input"),
    (lambda: binary(X, size=-1), FIELD, "non-negative integer, got -1"),
    (lambda: binary(X, size=True), FIELD, "non-negative integer, got True"),
    (lambda: binary(X, size="512"), FIELD, "non-negative integer, got '512'"),
    (lambda: binary(X.astype(np.int8), "INT8"), "inputs[0].datatype", "datatype of a binary input must be one of"),
    (lambda: binary(X.astype(np.int32), "INT32"), "inputs[0].datatype", r"datatype must be one of \['FP32', 'FP64'\]"),
    (lambda: binary(X.astype(np.float16), "FP16"), "inputs[0].datatype", "binary input must be one of"),
    (lambda: binary(X, shape=[2, 1, 8, True]), "inputs[0].shape", "non-negative integers"),
    (lambda: binary(X, shape=[10**9, 10**9, 1, 8, 8]), FIELD, "does not fit shape"),  # no allocation
    (lambda: binary(np.full((1, *SHAPE), np.nan, np.float32)), "inputs[0].data", "data holds NaN"),
    (lambda: binary(np.full((1, *SHAPE), -np.inf, np.float32)), "inputs[0].data", "data holds Infinity"),
    (lambda: binary(np.full((1, *SHAPE), 0.5)), FIELD, "512 does not fit .* FP32, which needs 256"),  # FP64 bytes
    (lambda: binary(np.full((1, *SHAPE), 1e300), "FP64"), "inputs[0].data", "beyond the FP32 range"),
    (lambda: binary(np.full((1, *SHAPE), 3.0, np.float32)), "inputs[0].data", "above the maximum 1.0"),
    (lambda: binary(np.zeros((5, *SHAPE), np.float32)), "inputs[0].shape", "batch size 5 exceeds 4"),
    (lambda: binary(np.zeros((1, 1, 8, 9), np.float32)), "inputs[0].shape", r"shape must be \[batch, 1, 8, 8\]"),
    (lambda: (binary(X)[0].replace(b'"datatype"', b'"data": [1], "datatype"'),
              str(int(binary(X)[1]) + 13)), "inputs[0].data", "both data and binary_data_size"),
    (lambda: (json.dumps({"inputs": [{"name": "i", "shape": [1], "datatype": "FP32", "data": [0.5]}]}).encode()
              + b"\0\0\0\0", str(len(json.dumps({"inputs": [{"name": "i", "shape": [1], "datatype": "FP32",
                                                                "data": [0.5]}]})))), HEADER,
     "4 bytes follow the JSON header, but no input declares"),
    (lambda: (binary(X)[0], None), "body", "not valid JSON|not UTF-8"),  # raw bytes without the header
    (lambda: (json.dumps({"inputs": [{"name": "i", "shape": [1, *SHAPE], "datatype": "FP32",
                                      "parameters": {"binary_data_size": 256}}]}).encode(), None), HEADER,
     "declares binary_data_size, but the request has no Inference-Header-Content-Length"),
    (lambda: binary(X, params={"shared_memory_region": "r"}), "inputs[0].parameters.shared_memory_region",
     "shared memory"),
    (lambda: binary(X, parameters={"binary_data_output": "yes"}), "parameters.binary_data_output", "true or false"),
    (lambda: binary(X, outputs=[{"name": "label", "parameters": {"classification": 3}}]),
     "outputs[0].parameters.classification", "classification outputs are not supported"),
    (lambda: binary(X, outputs=[{"name": "label", "parameters": {"binary_data": 1}}]),
     "outputs[0].parameters.binary_data", "true or false"),
    (lambda: binary(X, model_name="other"), "model_name", "model_name 'other' does not match the 'digits'"),
    (lambda: binary(X, model_name=7), "model_name", "must be a string"),
    (lambda: binary(X, model_version="2"), "model_version", "model_version '2' does not match the '1'"),
    (lambda: binary(X, model="digits"), "model", "unknown field 'model'"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 30 else None)
def test_binary_refusals_name_the_field(make, field, match):
    body, header = make()
    reject(body, header, field, match, version="1")


def test_model_name_and_version_that_match_are_accepted():
    req = parse(*binary(X, model_name="digits", model_version="1", id="r-1"), version="1")
    assert req.envelope.model_version == "1" and req.id == "r-1"
    # no version in the path: the sidecar lets it through, the model server (which knows it) checks it
    req = parse(*binary(X, model_version="7"))
    assert json.loads(encode_request(req)[0])["model_version"] == "7"
    assert parse(*binary(X, model_version=""), version="1").envelope.model_version is None


def test_the_forwarded_binary_request_is_canonical():
    req = parse(*binary(X.astype(np.float64), "FP64", id="a", parameters={"binary_data_output": True}))
    body, headers = encode_request(req, binary=True)
    n = int(headers[HEADER])
    assert headers["Content-Type"] == "application/octet-stream"
    assert json.loads(body[:n]) == {"id": "a", "inputs": [{"name": "input", "shape": [2, 1, 8, 8],
                                                           "datatype": "FP32", "parameters": {"binary_data_size": 512}}]}
    again = parse(body, headers[HEADER])
    assert np.array_equal(again.x, X)


def test_outputs_selected_and_encoded_as_asked():
    env = Envelope(id=None, inputs=[], outputs=[("label", True), ("probabilities", None)], binary_output=False)
    assert select_outputs(env, ["probabilities", "label"]) == (["label", "probabilities"], {"label"})
    all_binary = Envelope(id=None, inputs=[], binary_output=True)
    assert select_outputs(all_binary, ["probabilities", "label"]) == (["probabilities", "label"],
                                                                      {"probabilities", "label"})
    with pytest.raises(InvalidInput) as err:
        select_outputs(Envelope(id=None, inputs=[], outputs=[("label", None), ("scores", None)]), ["label"])
    assert err.value.field == "outputs[1].name" and "'scores' is not served here" in err.value.message
    doc = {"model_name": "m", "outputs": [
        {"name": "probabilities", "datatype": "FP32", "shape": [1, 2], "data": np.array([0.25, 0.75], np.float32)},
        {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["fraud"]},
        {"name": "low_confidence", "datatype": "BOOL", "shape": [1], "data": [True]}]}
    body, headers = encode_response(doc, ["probabilities", "label", "low_confidence"], {"probabilities",
                                                                                       "low_confidence"})
    n = int(headers["Inference-Header-Content-Length"])
    head = json.loads(body[:n])
    assert [o.get("parameters", {}).get("binary_data_size") for o in head["outputs"]] == [8, None, 1]
    assert head["outputs"][1]["data"] == ["fraud"]
    assert np.frombuffer(body[n:n + 8], "<f4").tolist() == [0.25, 0.75] and body[n + 8:] == b"\x01"


FEATURES = [{"name": "amt", "type": "number", "min": 0.0, "max": 1000.0},
            {"name": "category", "type": "category", "vocabulary": ["home", "travel"]},
            {"name": "hour", "type": "integer", "min": 0.0, "max": 23.0}]
SCHEMA = TabularSchema(FEATURES)


def named_binary(category_raw=None, hour=np.array([3], np.int64), amt=np.array([12.5])):
    parts = [("amt", "FP64", amt.tobytes(), [len(amt)]),
             ("category", "BYTES", encode_strings(["travel"]) if category_raw is None else category_raw, [1]),
             ("hour", "INT64", hour.tobytes(), [len(hour)])]
    inputs = [{"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(r)}} for n, d, r, s in parts]
    head = json.dumps({"inputs": inputs}).encode()
    return head + b"".join(r for _, _, r, _ in parts), str(len(head))


def test_tabular_binary_named_form():
    body, header = named_binary()
    assert SCHEMA.parse(body, Limits(max_batch_size=4), header=header).x.tolist() == [[12.5, 1.0, 3.0]]


@pytest.mark.parametrize("kwargs, field, match", [
    ({"category_raw": struct.pack("<I", 9) + b"trav"}, "inputs[1].parameters.binary_data_size", "runs past"),
    ({"category_raw": b"\1\0"}, "inputs[1].parameters.binary_data_size", "ends after 0 of 1 elements"),
    ({"category_raw": encode_strings(["home", "x"])}, "inputs[1].parameters.binary_data_size", "bytes left after"),
    ({"category_raw": struct.pack("<I", 2) + b"\xff\xfe"}, "inputs[1].data", "not UTF-8"),
    ({"category_raw": encode_strings(["crypto"])}, "inputs[category]", "'crypto' is not in its vocabulary"),
    ({"hour": np.array([30], np.int64)}, "inputs[hour]", "30 is not within"),
    ({"amt": np.array([np.nan])}, "inputs[amt]", "nan is not a finite number"),
])
def test_tabular_binary_refusals_name_the_input(kwargs, field, match):
    with pytest.raises(InvalidInput, match=match) as err:
        SCHEMA.parse(*named_binary(**kwargs)[:1], Limits(max_batch_size=4), header=named_binary(**kwargs)[1])
    assert err.value.field == field, (err.value.field, err.value.message)


@settings(max_examples=300, deadline=None)
@given(tail=st.binary(max_size=600), size=st.integers(-2, 600), header_shift=st.integers(-3, 3))
def test_arbitrary_binary_bodies_never_crash(tail, size, header_shift):
    head = json.dumps({"inputs": [{"name": "i", "shape": [1, *SHAPE], "datatype": "FP32",
                                   "parameters": {"binary_data_size": size}}]}).encode()
    try:
        req = parse(head + tail, str(len(head) + header_shift))
        assert req.x.shape == (1, 1, 8, 8) and np.isfinite(req.x).all() and req.x.min() >= 0 and req.x.max() <= 1
    except InvalidInput as exc:
        assert exc.field and exc.status == 400
