"""Requests to a tabular model (model.json has ``tabular``), checked feature by feature by the validation sidecar.

Two Open Inference Protocol forms, both answered the same way:

- one numeric tensor ``[batch, n_features]`` (FP32 or FP64), features in model.json's order, a category as its
  index in the vocabulary;
- one tensor per feature, named as the feature, shape ``[batch]``: numbers as FP32, FP64, INT32 or INT64, a
  category as BYTES holding one of its vocabulary's strings.

Every value is checked against its feature: a number (not a string, a boolean or null), finite, whole for an
integer feature, within the feature's bounds widened by ``validation.rangeTolerance`` of their width, a
known category. Each 400 names the feature (``field`` is ``inputs[<feature>]``). What goes on to the model
server is always the first form, re-encoded: nothing the client sent passes through unchecked.
"""
from __future__ import annotations

import json
import math
import pathlib

import numpy as np

from .errors import InvalidInput
from .protocol import InferRequest, Limits, decode_body, parse_envelope, parse_tensor

NUMERIC_TYPES = {"FP32", "FP64", "INT32", "INT64"}


def _flat(data: list) -> list:
    """A tensor's values in order, whether sent flat or nested one level ([[a], [b]] or [[a, b, c]])."""
    return [v for row in data for v in (row if isinstance(row, list) else [row])]


class TabularSchema:
    def __init__(self, features: list[dict], tolerance: float = 0.1):
        self.features = features
        self.names = [f["name"] for f in features]
        self.low = np.full(len(features), -np.inf)
        self.high = np.full(len(features), np.inf)
        for j, f in enumerate(features):
            if f["type"] == "category":
                self.low[j], self.high[j] = 0, len(f["vocabulary"]) - 1
            elif f.get("min") is not None and f.get("max") is not None:
                slack = tolerance * (f["max"] - f["min"])
                self.low[j], self.high[j] = f["min"] - slack, f["max"] + slack
        self.index = {f["name"]: {v: i for i, v in enumerate(f.get("vocabulary") or [])} for f in features}

    @classmethod
    def from_model_dir(cls, model_dir: pathlib.Path, tolerance: float) -> "TabularSchema | None":
        """The schema of a verified tabular model, or None for an image model."""
        meta = json.loads((model_dir / "model.json").read_text())
        tab = meta.get("tabular")
        return cls(tab["features"], tolerance) if tab else None

    # ------------------------------------------------------------------ parse
    def parse(self, body: bytes, limits: Limits, *, header: str | None = None, model: str | None = None,
              version: str | None = None) -> InferRequest:
        """``header``, ``model``, ``version``: as for protocol.parse_infer_request (binary tensors decode first)."""
        try:
            doc, head, binary = decode_body(body, header)
        except InvalidInput as exc:
            self._name_the_constant(body if header is None else b"", exc)
            raise
        env = parse_envelope(doc, max_inputs=len(self.features), model=model, version=version)
        env.binary_input = binary
        inputs = env.inputs
        if len(inputs) == 1 and isinstance(inputs[0], dict) and inputs[0].get("name") not in self.names:
            self._typed_cells(inputs[0])
            x = parse_tensor(inputs[0], head, "inputs[0]", input_shape=[len(self.features)], limits=Limits(
                max_batch_size=limits.max_batch_size)).astype(np.float64)
            for j, name in enumerate(self.names):
                self._check(name, j, x[:, j], f"inputs[{name}]")
        else:
            x = self._named(inputs, limits)
        return InferRequest(id=env.id, x=x.astype(np.float32), envelope=env)

    def _named(self, inputs: list, limits: Limits) -> np.ndarray:
        given = {}
        for i, tensor in enumerate(inputs):
            name = tensor.get("name") if isinstance(tensor, dict) else None
            if name not in self.names:
                raise InvalidInput(f"{name!r} is not a feature of this model; features: {self.names}",
                                   field=f"inputs[{i}].name")
            if name in given:
                raise InvalidInput(f"feature {name!r} is given twice", field=f"inputs[{name}]")
            given[name] = tensor
        missing = [n for n in self.names if n not in given]
        if missing:
            raise InvalidInput(f"missing feature(s) {missing}: one input per feature, or one [batch, "
                               f"{len(self.names)}] tensor", field=f"inputs[{missing[0]}]")
        batch = None
        columns = []
        for j, name in enumerate(self.names):
            f, tensor = self.features[j], given[name]
            field = f"inputs[{name}]"
            shape = tensor.get("shape")
            if not isinstance(shape, list) or len(shape) not in (1, 2) or any(
                    not isinstance(d, int) or isinstance(d, bool) for d in shape) or shape[1:] not in ([], [1]):
                raise InvalidInput(f"shape must be [batch] (or [batch, 1]), got {shape!r}", field=field)
            if batch is None:
                batch = shape[0]
                if batch < 1 or limits.max_batch_size is not None and batch > limits.max_batch_size:
                    raise InvalidInput(f"batch size {batch} must be 1 to {limits.max_batch_size}", field=field)
            elif shape[0] != batch:
                raise InvalidInput(f"batch size {shape[0]} differs from the other features' {batch}", field=field)
            data = tensor.get("data")
            if isinstance(data, np.ndarray):  # a binary tensor (binary.attach_inputs); its values go the same way
                data = data.tolist()
            if not isinstance(data, list):
                raise InvalidInput("data must be a list", field=field)
            flat = _flat(data)
            if len(flat) != batch:
                raise InvalidInput(f"data has {len(flat)} values, shape {shape} needs {batch}", field=field)
            if f["type"] == "category":
                if tensor.get("datatype") != "BYTES":
                    raise InvalidInput(f"feature {name!r} is a category: datatype BYTES holding one of its "
                                       "vocabulary's strings", field=field)
                col = []
                for v in flat:
                    if not isinstance(v, str):
                        raise InvalidInput(f"feature {name!r}: {v!r} is not a string", field=field)
                    if v not in self.index[name]:
                        raise InvalidInput(f"feature {name!r}: {v!r} is not in its vocabulary "
                                           f"{f['vocabulary']}", field=field)
                    col.append(self.index[name][v])
                columns.append(np.asarray(col, np.float64))
                continue
            if tensor.get("datatype") not in NUMERIC_TYPES:
                raise InvalidInput(f"feature {name!r} is a number: datatype one of {sorted(NUMERIC_TYPES)}, got "
                                   f"{tensor.get('datatype')!r}", field=field)
            for v in flat:
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    what = "null (a missing value)" if v is None else f"{type(v).__name__} {v!r}"
                    raise InvalidInput(f"feature {name!r}: {what} is not a number", field=field)
            col = np.asarray(flat, np.float64)
            self._check(name, j, col, field)
            columns.append(col)
        return np.stack(columns, axis=1)

    def _typed_cells(self, tensor: dict) -> None:
        """In the one-tensor form, a cell that is not a number (a string amount, a boolean, null) is named by
        its feature (its column), not only as somewhere in the data."""
        data = tensor.get("data")
        if not isinstance(data, list):  # a binary tensor holds numbers only
            return
        flat = _flat(data)
        for i, v in enumerate(flat):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                name = self.names[i % len(self.names)]
                what = "null (a missing value)" if v is None else f"{type(v).__name__} {v!r}"
                raise InvalidInput(f"feature {name!r}: {what} is not a number", field=f"inputs[{name}]")

    def _check(self, name: str, j: int, col: np.ndarray, field: str) -> None:
        f = self.features[j]
        bad = ~np.isfinite(col)
        if bad.any():
            raise InvalidInput(f"feature {name!r}: {col[bad][0]} is not a finite number", field=field)
        if f["type"] != "number":
            frac = col != np.round(col)
            if frac.any():
                what = "a vocabulary index" if f["type"] == "category" else "an integer"
                raise InvalidInput(f"feature {name!r}: {col[frac][0]} is not {what}", field=field)
        out = (col < self.low[j]) | (col > self.high[j])
        if out.any():
            what = (f"a vocabulary index (0..{int(self.high[j])})" if f["type"] == "category" else
                    f"within [{self.low[j]:g}, {self.high[j]:g}] (the feature's range {f.get('min'):g}.."
                    f"{f.get('max'):g}, from {f.get('boundsFrom', 'the spec')}, plus the tolerance)")
            raise InvalidInput(f"feature {name!r}: {col[out][0]:g} is not {what}", field=field)

    def _name_the_constant(self, body: bytes, exc: InvalidInput) -> None:
        """A NaN or Infinity token is not JSON; say which feature it was sent for, when that can be told."""
        if "is not a number JSON allows" not in exc.message:
            return
        try:
            doc = json.loads(body, parse_constant=lambda c: float(c.replace("Infinity", "inf")))
            for tensor in doc.get("inputs") or []:
                data = tensor.get("data")
                flat = _flat(data)
                bad = [i for i, v in enumerate(flat) if isinstance(v, float) and not math.isfinite(v)]
                if not bad:
                    continue
                if tensor.get("name") in self.names:
                    name = tensor["name"]
                else:
                    name = self.names[bad[0] % len(self.names)]
                raise InvalidInput(f"feature {name!r}: {exc.message.split(': ', 1)[-1]}", field=f"inputs[{name}]")
        except InvalidInput:
            raise
        except (ValueError, TypeError, AttributeError):
            return
