"""Open Inference Protocol v2 (KServe V2) request parsing, with every rejection naming its field.

One parser for both the validation sidecar (all limits from the spec) and the
model server (shape and type only, defence in depth).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import orjson

from .binary import attach_inputs, encode_outputs, header_length
from .errors import InvalidInput

DATATYPES = {"FP32": np.float32, "FP64": np.float64}
# model_name and model_version: the KServe SDK puts model_name in every request body; either must match the path
_ALLOWED_REQUEST_KEYS = {"id", "parameters", "inputs", "outputs", "model_name", "model_version"}
_ALLOWED_INPUT_KEYS = {"name", "shape", "datatype", "parameters", "data"}
_SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


@dataclass(frozen=True)
class Limits:
    max_batch_size: int | None = None
    min_value: float | None = None
    max_value: float | None = None


@dataclass
class Envelope:
    """The request around its tensors, checked: what the response must hold and how."""
    id: str | None
    inputs: list
    outputs: list[tuple[str, bool | None]] | None = None  # requested outputs: (name, its binary_data flag)
    binary_output: bool = False                            # parameters.binary_data_output
    model_version: str | None = None
    binary_input: bool = False                             # the body used the binary tensor data extension


@dataclass
class InferRequest:
    id: str | None
    x: np.ndarray  # float32, (batch, *input_shape)
    envelope: Envelope | None = None


_CONSTANTS = (b"NaN", b"Infinity")


def loads(body: bytes) -> object:
    """Parse a request body, with every failure a 400 naming the body.

    orjson, not the standard library: the 477-byte one-digit request parses in 1.5-2.0 us with orjson and
    13.4-14.7 us with ``json.loads``, and encoding the forwarded request drops from 13.6-13.7 us to 1.8-2.4 us
    (benchmarks/serving_micro.py); JSON was 22% of the model server's busy samples under load (py-spy).
    orjson also refuses what the standard library lets through: NaN/Infinity tokens, numbers that overflow a
    double, lone surrogates, nesting beyond 1024.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        reason = str(exc)
        token = next((t for t in _CONSTANTS if body[exc.pos:exc.pos + len(t)] == t), None)
        if token is not None:  # orjson stops after a sign: "-Infinity" is reported at "Infinity"
            sign = "-" if body[exc.pos - 1:exc.pos] == b"-" else ""
            raise InvalidInput(f"request body is not valid JSON: {sign}{token.decode()} is not a number JSON allows",
                               field="body") from None
        if "UTF-8" in reason:
            raise InvalidInput("request body is not UTF-8", field="body") from None
        if "depth limit" in reason:
            raise InvalidInput("request JSON is nested too deeply", field="body") from None
        raise InvalidInput(f"request body is not valid JSON: {reason}", field="body") from None


def dumps(doc: object) -> bytes:
    """Compact JSON; numpy arrays are written directly (float32 as its shortest round-tripping decimal)."""
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def _holds_bool(data: list) -> bool:
    """numpy turns [true, 0.5] into [1.0, 0.5]; JSON booleans are not FP32 values."""
    stack = [data]
    while stack:
        value = stack.pop()
        if value is True or value is False:
            return True
        if isinstance(value, list):
            stack.extend(value)
    return False


def _check_parameters(params, field: str) -> None:
    """OIP v2 parameters: an object of scalar values. Those of the binary tensor data extension must have their
    type; shared memory and Triton's classification outputs are not served here, and saying so beats ignoring
    them (the client would wait for data that never comes, or read probabilities as class labels)."""
    if params is None:
        return
    if not isinstance(params, dict) or len(params) > 32:
        raise InvalidInput("parameters must be an object of at most 32 entries", field=field)
    for key, value in params.items():
        if not isinstance(value, (str, int, float, bool)) or isinstance(value, str) and len(value) > 1024:
            raise InvalidInput("parameter values must be strings, numbers or booleans", field=f"{field}.{key}")
        if key in ("binary_data", "binary_data_output") and not isinstance(value, bool):
            raise InvalidInput(f"{key} must be true or false, got {value!r}", field=f"{field}.{key}")
        if key in _SHARED_MEMORY:
            raise InvalidInput(f"shared memory ({key}) is not supported: send the tensor in the request body",
                               field=f"{field}.{key}")
        if key == "classification":
            raise InvalidInput("classification outputs are not supported: request the label output",
                               field=f"{field}.{key}")


def decode_body(body: bytes, header: str | None) -> tuple[object, bytes, bool]:
    """(document, its JSON bytes, binary?) of a request body; ``header`` is Inference-Header-Content-Length."""
    n = header_length(header, len(body))
    if n is None:
        doc = loads(body)
        inputs = doc.get("inputs") if isinstance(doc, dict) else None
        for i, tensor in enumerate(inputs if isinstance(inputs, list) else ()):
            params = tensor.get("parameters") if isinstance(tensor, dict) else None
            if isinstance(params, dict) and "binary_data_size" in params:
                raise InvalidInput(f"inputs[{i}] declares binary_data_size, but the request has no "
                                   "Inference-Header-Content-Length header", field="Inference-Header-Content-Length")
        return doc, body, False
    head = body[:n]
    doc = loads(head)
    attach_inputs(doc, body[n:])
    return doc, head, True


def parse_infer_request(body: bytes, *, input_shape: list[int], limits: Limits = Limits(), header: str | None = None,
                        model: str | None = None, version: str | None = None) -> InferRequest:
    """``header``: the request's Inference-Header-Content-Length; ``model``/``version``: what the path names."""
    doc, head, binary = decode_body(body, header)
    env = parse_envelope(doc, model=model, version=version)
    env.binary_input = binary
    if len(env.inputs) != 1:
        raise InvalidInput("inputs must be a list holding exactly one tensor", field="inputs")
    return InferRequest(id=env.id, x=parse_tensor(env.inputs[0], head, "inputs[0]", input_shape=input_shape,
                                                  limits=limits), envelope=env)


def parse_envelope(doc: object, max_inputs: int = 1, *, model: str | None = None,
                   version: str | None = None) -> Envelope:
    """The request around the tensors: id, model name and version, parameters, requested outputs, and the list of
    inputs. A ``model_name`` or ``model_version`` in the body must be what the path says (``model``,
    ``version``; None: the path does not say, and the model server, which knows its version, checks it)."""
    if not isinstance(doc, dict):
        raise InvalidInput("request must be a JSON object", field="body")
    extra = set(doc) - _ALLOWED_REQUEST_KEYS
    if extra:
        raise InvalidInput(f"unknown field {sorted(extra)[0]!r}", field=sorted(extra)[0])
    req_id = doc.get("id")
    if req_id is not None and (not isinstance(req_id, str) or len(req_id) > 128):
        raise InvalidInput("id must be a string of at most 128 characters", field="id")
    for key, expected in (("model_name", model), ("model_version", version)):
        value = doc.get(key)
        if value is None or key == "model_version" and value == "":
            continue
        if not isinstance(value, str) or len(value) > 128:
            raise InvalidInput(f"{key} must be a string of at most 128 characters", field=key)
        if expected is not None and value != expected:
            raise InvalidInput(f"{key} {value!r} does not match the {expected!r} of the request path", field=key)
    params = doc.get("parameters")
    _check_parameters(params, "parameters")
    outputs = doc.get("outputs")
    requested = None
    if outputs is not None:
        if not isinstance(outputs, list) or len(outputs) > 8:
            raise InvalidInput("outputs must be a list of at most 8 requested outputs", field="outputs")
        requested = []
        for i, out in enumerate(outputs):
            if not isinstance(out, dict) or not isinstance(out.get("name"), str) or set(out) - {"name", "parameters"}:
                raise InvalidInput("each requested output is an object with a string name", field=f"outputs[{i}]")
            _check_parameters(out.get("parameters"), f"outputs[{i}].parameters")
            requested.append((out["name"], (out.get("parameters") or {}).get("binary_data")))
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not 1 <= len(inputs) <= max_inputs:
        raise InvalidInput("inputs must be a list holding exactly one tensor" if max_inputs == 1 else
                           f"inputs must be a list of 1 to {max_inputs} tensors", field="inputs")
    for i, tensor in enumerate(inputs):
        if isinstance(tensor, dict):
            _check_parameters(tensor.get("parameters"), f"inputs[{i}].parameters")
    return Envelope(id=req_id, inputs=inputs, outputs=requested,
                    binary_output=bool((params or {}).get("binary_data_output", False)),
                    model_version=doc.get("model_version") or None)


def select_outputs(env: Envelope | None, available: list[str]) -> tuple[list[str], set[str]]:
    """The outputs a response holds (all of ``available`` unless the request names some) and those to send as
    binary; an output the request names that is not available is a 400 naming it."""
    if env is None or env.outputs is None:
        names = list(available)
        return names, set(names) if env is not None and env.binary_output else set()
    names, binary = [], set()
    for i, (name, flag) in enumerate(env.outputs):
        if name not in available:
            raise InvalidInput(f"output {name!r} is not served here; outputs: {available}", field=f"outputs[{i}].name")
        if name not in names:
            names.append(name)
        if flag if flag is not None else env.binary_output:
            binary.add(name)
    return names, binary


def encode_response(doc: dict, names: list[str], binary: set[str]) -> tuple[bytes, dict]:
    """A response holding the outputs ``names`` (``binary`` ones as raw tensors): (body, headers)."""
    doc["outputs"] = [o for o in doc["outputs"] if o["name"] in names]
    body, n = encode_outputs(doc, binary, dumps)
    if n is None:
        return body, {"Content-Type": "application/json"}
    return body, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(n)}


def parse_tensor(tensor: object, body: bytes, f: str, *, input_shape: list[int],
                 limits: Limits = Limits()) -> np.ndarray:
    """One numeric tensor of shape [batch, *input_shape], as float32, every rejection naming ``f``."""
    if not isinstance(tensor, dict):
        raise InvalidInput("tensor must be an object", field=f)
    extra = set(tensor) - _ALLOWED_INPUT_KEYS
    if extra:
        raise InvalidInput(f"unknown field {sorted(extra)[0]!r}", field=f"{f}.{sorted(extra)[0]}")
    if not isinstance(tensor.get("name"), str):
        raise InvalidInput("name must be a string", field=f"{f}.name")
    _check_parameters(tensor.get("parameters"), f"{f}.parameters")
    dtype = tensor.get("datatype")
    if not isinstance(dtype, str) or dtype not in DATATYPES:
        raise InvalidInput(f"datatype must be one of {sorted(DATATYPES)}, got {dtype!r}", field=f"{f}.datatype")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise InvalidInput("shape must be a non-empty list of non-negative integers", field=f"{f}.shape")
    if shape[1:] != list(input_shape):
        raise InvalidInput(f"shape must be [batch, {', '.join(map(str, input_shape))}], got {shape}",
                           field=f"{f}.shape")
    batch = shape[0]
    if batch < 1:
        raise InvalidInput("batch size must be at least 1", field=f"{f}.shape")
    if limits.max_batch_size is not None and batch > limits.max_batch_size:
        raise InvalidInput(f"batch size {batch} exceeds {limits.max_batch_size}", field=f"{f}.shape")
    data = tensor.get("data")
    if isinstance(data, np.ndarray):  # decoded from the binary tensor data extension (binary.attach_inputs)
        arr = data
    elif not isinstance(data, list):
        raise InvalidInput("data must be a list of numbers", field=f"{f}.data")
    else:
        try:
            arr = np.asarray(data)
        except ValueError:  # ragged nesting
            raise InvalidInput("data is ragged: nested lists of unequal length", field=f"{f}.data") from None
    # bools, strings, objects (ints beyond 64 bits); the byte search keeps the Python walk off the usual path
    if arr.dtype.kind not in "if" or (data is not arr and (b"true" in body or b"false" in body) and _holds_bool(data)):
        raise InvalidInput("data must hold only numbers", field=f"{f}.data")
    expected = math.prod(shape)
    if arr.size != expected:
        raise InvalidInput(f"data has {arr.size} values, shape {shape} needs {expected}", field=f"{f}.data")
    if arr.ndim != 1 and list(arr.shape) != shape:
        raise InvalidInput(f"nested data has shape {list(arr.shape)}, declared {shape}", field=f"{f}.data")
    x = arr.astype(np.float64).reshape(shape)
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)  # what the model gets: 1e39 is a finite double but an infinite float32
    if not np.isfinite(x32).all():
        # NaN and Infinity come only in binary (JSON refuses the tokens); a finite double can still overflow
        what = ("NaN" if np.isnan(x).any() else "Infinity" if np.isinf(x).any() else
                "a value beyond the FP32 range (±3.4e38)")
        raise InvalidInput(f"data holds {what}", field=f"{f}.data")
    if limits.min_value is not None and x.min() < limits.min_value:
        raise InvalidInput(f"value {float(x.min())} is below the minimum {limits.min_value}", field=f"{f}.data")
    if limits.max_value is not None and x.max() > limits.max_value:
        raise InvalidInput(f"value {float(x.max())} is above the maximum {limits.max_value}", field=f"{f}.data")
    return x32


def encode_request(req: InferRequest, name: str = "input", *, binary: bool = False) -> tuple[bytes, dict]:
    """The canonical request the sidecar forwards: only validated fields, nothing smuggled through; (body,
    headers). ``binary``: the tensor as raw float32 after the JSON header (a binary request goes on as one)."""
    tensor = {"name": name, "shape": list(req.x.shape), "datatype": "FP32"}
    raw = np.ascontiguousarray(req.x, np.float32)
    if binary:
        tensor["parameters"] = {"binary_data_size": raw.nbytes}
    else:
        tensor["data"] = raw.reshape(-1)
    doc = {"inputs": [tensor]}
    if req.id is not None:
        doc["id"] = req.id
    if req.envelope is not None and req.envelope.model_version is not None:
        doc["model_version"] = req.envelope.model_version  # the model server knows its version and checks it
    head = dumps(doc)
    if not binary:
        return head, {"Content-Type": "application/json"}
    return head + raw.tobytes(), {"Content-Type": "application/octet-stream",
                                  "Inference-Header-Content-Length": str(len(head))}
