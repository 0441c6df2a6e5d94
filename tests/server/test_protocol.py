"""OIP v2 request parsing: every rejection a 400 naming the field; nothing crashes."""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hardened_server.errors import InvalidInput
from hardened_server.protocol import Limits, encode_request, parse_infer_request

SHAPE = [1, 8, 8]
LIMITS = Limits(max_batch_size=4, min_value=0.0, max_value=1.0)


def body(data=None, shape=None, datatype="FP32", **extra):
    tensor = {"name": "input", "shape": shape or [1, *SHAPE], "datatype": datatype,
              "data": data if data is not None else [0.5] * 64}
    return json.dumps({"inputs": [tensor], **extra}).encode()


def reject(raw: bytes, field: str, match: str):
    with pytest.raises(InvalidInput, match=match) as err:
        parse_infer_request(raw, input_shape=SHAPE, limits=LIMITS)
    assert err.value.field == field and err.value.status == 400


def test_valid_flat_and_nested():
    req = parse_infer_request(body(), input_shape=SHAPE, limits=LIMITS)
    assert req.x.shape == (1, 1, 8, 8) and req.x.dtype == np.float32
    nested = np.full((2, 1, 8, 8), 0.25).tolist()
    req = parse_infer_request(body(nested, [2, *SHAPE], id="r1"), input_shape=SHAPE, limits=LIMITS)
    assert req.x.shape == (2, 1, 8, 8) and req.id == "r1"


@pytest.mark.parametrize("raw, field, match", [
    (b"not json", "body", "not valid JSON"),
    (b"[" * 100000 + b"]" * 100000, "body", "nested too deeply|not valid JSON"),
    (b'{"inputs": [{"data": [NaN]}]}', "body", "NaN is not a number JSON allows"),
    (b'{"inputs": [{"data": [-Infinity]}]}', "body", "-Infinity is not a number JSON allows"),
    (b'{"inputs": [{"data": [' + b"9" * 5000 + b"]}]}", "body", "not valid JSON"),
    (b"\xff\xfe", "body", "not UTF-8|not valid JSON"),
    (b"[1, 2]", "body", "must be a JSON object"),
    (b'{"inputs": []}', "inputs", "exactly one tensor"),
    (b'{"inputs": [1]}', "inputs[0]", "tensor must be an object"),
    (b'{"inputs": [], "smuggled": 1}', "smuggled", "unknown field"),
    (body(datatype="INT8"), "inputs[0].datatype", "datatype must be one of"),
    (body(shape=[1, 1, 8, 9]), "inputs[0].shape", r"shape must be \[batch, 1, 8, 8\], got \[1, 1, 8, 9\]"),
    (body(shape=[0, *SHAPE], data=[]), "inputs[0].shape", "at least 1"),
    (body(shape=[5, *SHAPE], data=[0.5] * 320), "inputs[0].shape", "batch size 5 exceeds 4"),
    (body(shape=[1, 1, 8, True]), "inputs[0].shape", "non-negative integers"),
    (body(data=[0.5] * 63), "inputs[0].data", "data has 63 values, shape .* needs 64"),
    (body(data=[[0.5] * 8, [0.5] * 7]), "inputs[0].data", "ragged"),
    (body(data=["0.5"] * 64), "inputs[0].data", "only numbers"),
    (body(data=[True] * 64), "inputs[0].data", "only numbers"),
    (body(data=[10**30] + [0] * 63), "inputs[0].data", "only numbers|above the maximum"),
    (body().replace(b"[0.5,", b"[1e400,", 1), "body", "not valid JSON: number is infinity"),
    (body().replace(b"[0.5,", b"[1e39,", 1), "inputs[0].data", "beyond the FP32 range"),  # finite as a double
    (body(data=[-0.1] + [0] * 63), "inputs[0].data", "below the minimum 0.0"),
    (body(data=[1.5] + [0] * 63), "inputs[0].data", "above the maximum 1.0"),
    (body(id=5), "id", "id must be a string"),
    (b'{"id": "\\ud800", "inputs": []}', "body", "not valid JSON"),  # a lone surrogate cannot be re-encoded
])
def test_rejections_name_the_field(raw, field, match):
    reject(raw, field, match)


def test_forwarded_request_holds_only_validated_fields():
    req = parse_infer_request(body(id="abc", parameters={"x": 1}), input_shape=SHAPE, limits=LIMITS)
    doc = json.loads(encode_request(req)[0])
    assert set(doc) == {"inputs", "id"} and doc["inputs"][0]["shape"] == [1, 1, 8, 8]
    # float32 values travel as their shortest decimal and arrive as the same float32 values
    x = np.random.default_rng(0).random((3, *SHAPE)).astype(np.float32)
    sent = parse_infer_request(body(x.reshape(-1).tolist(), [3, *SHAPE]), input_shape=SHAPE, limits=LIMITS)
    again = parse_infer_request(encode_request(sent)[0], input_shape=SHAPE, limits=LIMITS)
    assert again.x.dtype == np.float32 and np.array_equal(again.x, x)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(raw):
    try:
        parse_infer_request(raw, input_shape=SHAPE, limits=LIMITS)
    except InvalidInput as exc:
        assert exc.field


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4),
                           max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(["name", "shape", "datatype", "data", "parameters", "extra"]), value=json_values)
def test_mutated_tensors_are_valid_or_rejected_with_a_field(key, value):
    doc = json.loads(body())
    doc["inputs"][0][key] = value
    try:
        req = parse_infer_request(json.dumps(doc).encode(), input_shape=SHAPE, limits=LIMITS)
        assert req.x.shape[1:] == (1, 8, 8) and np.isfinite(req.x).all()
    except InvalidInput as exc:  # "body": an integer of over 4,300 digits is refused by the JSON parser
        assert exc.field.startswith("inputs[0]") or exc.field == "body"


@pytest.mark.parametrize("raw, field, match", [
    # found by the fuzzer (tests/server/test_fuzz.py): these were accepted before
    (body([True] + [0.5] * 63), "inputs[0].data", "only numbers"),
    (body(np.full((1, 1, 8, 8), 0.5).tolist()[:0] + [[[[False] * 8] * 8]]), "inputs[0].data", "only numbers"),
    (body(parameters=[1]), "parameters", "object"),
    (body(parameters={"a": {"nested": 1}}), "parameters.a", "strings, numbers or booleans"),
    (body(outputs="x"), "outputs", "list"),
    (body(outputs=[{"name": []}]), "outputs[0]", "string name"),
    (json.dumps({"inputs": [{"name": "i", "shape": [1, *SHAPE], "datatype": "FP32", "data": [0.5] * 64,
                             "parameters": "x"}]}).encode(), "inputs[0].parameters", "object"),
])
def test_fuzzer_findings_are_rejected(raw, field, match):
    reject(raw, field, match)


def test_valid_parameters_and_outputs_are_accepted():
    req = parse_infer_request(body(parameters={"binary_data": False, "x": 1}, outputs=[{"name": "output-0"}]),
                              input_shape=SHAPE, limits=LIMITS)
    assert req.x.shape == (1, 1, 8, 8)
