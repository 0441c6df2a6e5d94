"""Warm start: model.initialWeights, a safetensors file pinned by its sha256, loaded before hardening.

The bytes are read whole (file://, pvc:// through the mounted claim, s3:// with boto3), their sha256 is
compared with the spec's before anything parses them, and they are parsed by safetensors only: a pickle
(``torch.save``'s zip or a bare pickle stream) is refused by its first bytes, whatever the file is called.
Every tensor of the network must be in the file with its shape, and every tensor of the file must belong to
the network, so a file for another architecture is an error naming the tensors, not a silent partial load.
"""
from __future__ import annotations

import hashlib
import pathlib
import urllib.parse

from hardened_model.spec import PICKLE_HELP

from .data import DataError

MAX_BYTES = 4 * 1024 ** 3


def read_bytes(uri: str, *, volumes: dict[str, str], s3_client=None) -> bytes:
    url = urllib.parse.urlsplit(uri)
    field = "model.initialWeights.uri"
    if url.scheme == "s3":
        try:
            obj = s3_client.get_object(Bucket=url.netloc, Key=url.path.lstrip("/"))
            return obj["Body"].read(MAX_BYTES + 1)
        except Exception as exc:  # noqa: BLE001 - botocore's errors: say which object
            raise DataError(f"{field}: cannot read {uri}: {exc}") from None
    if url.scheme == "pvc":
        mount = volumes.get(url.netloc)
        if mount is None:
            raise DataError(f"{field}: {uri}: claim {url.netloc!r} is not mounted in this pod")
        path = pathlib.Path(mount) / url.path.lstrip("/")
    else:
        path = pathlib.Path(url.netloc + url.path) if url.netloc else pathlib.Path(url.path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise DataError(f"{field}: {uri} is larger than {MAX_BYTES} bytes")
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{field}: cannot read {uri}: {exc.strerror}") from None


def check(blob: bytes, uri: str, sha256: str) -> None:
    got = hashlib.sha256(blob).hexdigest()
    if got != sha256:
        raise DataError(f"model.initialWeights.sha256: {uri} has sha256 {got}, the spec pins {sha256}; "
                        f"the file changed or the pin is wrong")
    if blob[:2] == b"PK" or blob[:1] == b"\x80":  # torch.save's zip archive, or a bare pickle stream
        raise DataError(f"model.initialWeights.uri: {uri} is a pickle, not safetensors. {PICKLE_HELP}")


def load_tensors(blob: bytes, uri: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(blob)
    except (SafetensorError, ValueError, OSError) as exc:
        raise DataError(f"model.initialWeights.uri: {uri} is not a safetensors file: {exc}") from None


def apply(model, tensors: dict, uri: str) -> int:
    """Copy ``tensors`` into ``model`` (same names and shapes, both ways); the number of tensors loaded."""
    import torch

    state = model.state_dict()
    missing = [k for k in state if k not in tensors]
    unexpected = [k for k in tensors if k not in state]
    wrong = [f"{k} {tuple(tensors[k].shape)} (the network has {tuple(v.shape)})" for k, v in state.items()
             if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"not in the network {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
    if wrong:
        problems.append(f"other shapes {', '.join(wrong[:8])}")
    if problems:
        raise DataError(f"model.initialWeights.uri: {uri} does not fit model.architecture: " + "; ".join(problems))
    with torch.no_grad():
        for k, v in state.items():
            v.copy_(tensors[k].to(dtype=v.dtype, device=v.device))
    return len(state)


def initial_tensors(spec, *, volumes: dict[str, str], s3_client=None) -> dict | None:
    """The checked tensors of model.initialWeights, or None when the spec names none."""
    iw = spec.model.initial_weights
    if iw is None:
        return None
    blob = read_bytes(iw.uri, volumes=volumes, s3_client=s3_client)
    check(blob, iw.uri, iw.sha256)
    return load_tensors(blob, iw.uri)
