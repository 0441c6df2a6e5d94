"""The binary tensor data extension of the Open Inference Protocol over HTTP (KServe v2, Triton's
``binary_tensor_data``): what tritonclient and the KServe SDK send by default.

A binary request is a JSON header of ``Inference-Header-Content-Length`` bytes followed by the raw tensors, in
the order of the inputs that declare ``parameters.binary_data_size``: little-endian values, row-major; a BYTES
element is a 4-byte little-endian length and then its bytes. Here the raw tensors are decoded into the
inputs' ``data`` (a numpy array, or a list of strings for BYTES) before any other check, so a binary request
meets every check a JSON one does (datatype, shape, batch, bounds, NaN/Inf), plus its own: each declared size
must be a whole number of bytes that fits the shape and datatype, and the sizes must account for the body
exactly. Each refusal is a 400 naming the input.

A response carries outputs in binary when the request asks (``outputs[i].parameters.binary_data``, else
``parameters.binary_data_output``), in the same framing, with ``Content-Type: application/octet-stream``.
"""
from __future__ import annotations

import math
import struct

import numpy as np

from .errors import InvalidInput

HEADER = "Inference-Header-Content-Length"
# What a binary tensor may hold here, and how its values are laid out. The model's own check still decides
# which of these a request may use (FP32/FP64 for an image model; tabular models also take INT32, INT64, BYTES).
DTYPES = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
          "BOOL": np.dtype("?")}
INPUT_TYPES = ("BYTES", "FP32", "FP64", "INT32", "INT64")


def header_length(value: str | None, body_size: int) -> int | None:
    """The JSON header's length from ``Inference-Header-Content-Length``; None when the request is all JSON."""
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit() or not text.isascii() or len(text) > 12:
        raise InvalidInput(f"{HEADER} must be a whole number of bytes, got {value[:40]!r}", field=HEADER)
    n = int(text)
    if not 0 < n <= body_size:
        raise InvalidInput(f"{HEADER} is {n}, but the body holds {body_size} bytes", field=HEADER)
    return n


def _count(tensor: dict, f: str) -> int:
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise InvalidInput("shape must be a non-empty list of non-negative integers", field=f"{f}.shape")
    return math.prod(shape)


def _declared(tensor: dict, f: str) -> int | None:
    params = tensor.get("parameters")
    if not isinstance(params, dict) or "binary_data_size" not in params:
        return None
    size = params["binary_data_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(f"binary_data_size must be a non-negative integer, got {size!r}",
                           field=f"{f}.parameters.binary_data_size")
    if "data" in tensor:
        raise InvalidInput(f"input {tensor.get('name')!r} has both data and binary_data_size: send one",
                           field=f"{f}.data")
    return size


def decode_strings(raw: bytes, count: int, name: str, f: str) -> list[str]:
    """BYTES elements (4-byte little-endian length, then the bytes), each UTF-8 text."""
    out, pos = [], 0
    for _ in range(count):
        if pos + 4 > len(raw):
            raise InvalidInput(f"input {name!r}: BYTES data ends after {len(out)} of {count} elements",
                               field=f"{f}.parameters.binary_data_size")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise InvalidInput(f"input {name!r}: BYTES element {len(out)} of {n} bytes runs past its "
                               f"binary_data_size {len(raw)}", field=f"{f}.parameters.binary_data_size")
        try:
            out.append(raw[pos:pos + n].decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"input {name!r}: BYTES element {len(out)} is not UTF-8 text", field=f"{f}.data") from None
        pos += n
    if pos != len(raw):
        raise InvalidInput(f"input {name!r}: {len(raw) - pos} bytes left after its {count} BYTES elements",
                           field=f"{f}.parameters.binary_data_size")
    return out


def attach_inputs(doc: object, raw: bytes) -> None:
    """Decode the raw tensors after the JSON header into their inputs' ``data``. A malformed envelope is left
    for the protocol checks to name; sizes that disagree with the shape or with the body are refused here."""
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    pos, last = 0, None
    for i, tensor in enumerate(inputs if isinstance(inputs, list) else ()):
        if not isinstance(tensor, dict):
            continue
        f = f"inputs[{i}]"
        size = _declared(tensor, f)
        if size is None:
            continue
        name, dtype = tensor.get("name"), tensor.get("datatype")
        if dtype not in INPUT_TYPES:
            raise InvalidInput(f"datatype of a binary input must be one of {list(INPUT_TYPES)}, got {dtype!r}",
                               field=f"{f}.datatype")
        count = _count(tensor, f)
        if dtype != "BYTES" and size != count * DTYPES[dtype].itemsize:
            raise InvalidInput(f"input {name!r}: binary_data_size {size} does not fit shape {tensor['shape']} of "
                               f"{dtype}, which needs {count * DTYPES[dtype].itemsize} bytes",
                               field=f"{f}.parameters.binary_data_size")
        if pos + size > len(raw):
            raise InvalidInput(f"input {name!r}: binary_data_size {size} at offset {pos} runs past the "
                               f"{len(raw)} bytes after the JSON header", field=f"{f}.parameters.binary_data_size")
        chunk = raw[pos:pos + size]
        pos, last = pos + size, f
        tensor["data"] = (decode_strings(chunk, count, name, f) if dtype == "BYTES" else
                          np.frombuffer(chunk, DTYPES[dtype]))
    if pos != len(raw):
        if last is None:
            raise InvalidInput(f"{len(raw)} bytes follow the JSON header, but no input declares "
                               "parameters.binary_data_size", field=HEADER)
        raise InvalidInput(f"{len(raw) - pos} bytes follow the last binary input: the declared "
                           "binary_data_size values do not add up to the body", field=f"{last}.parameters.binary_data_size")


def encode_strings(values: list[str]) -> bytes:
    parts = []
    for v in values:
        b = v.encode("utf-8")
        parts += [struct.pack("<I", len(b)), b]
    return b"".join(parts)


def encode_outputs(doc: dict, binary: set[str], dumps) -> tuple[bytes, int | None]:
    """The response body with the outputs named in ``binary`` as raw tensors after the JSON header; the header's
    length, or None when every output stays JSON."""
    raws = []
    for out in doc.get("outputs", []):
        if out["name"] not in binary:
            continue
        data = out.pop("data")
        if out["datatype"] == "BYTES":
            raw = encode_strings(list(data))
        else:
            raw = np.ascontiguousarray(np.asarray(data, DTYPES[out["datatype"]])).tobytes()
        out["parameters"] = {**out.get("parameters", {}), "binary_data_size": len(raw)}
        raws.append(raw)
    head = dumps(doc)
    if not raws:
        return head, None
    return b"".join([head, *raws]), len(head)
