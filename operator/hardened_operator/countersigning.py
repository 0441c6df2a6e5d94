"""The operator's side of the platform countersignature (issue 27, point 4; hardened_model.countersign).

Off unless the operator is installed with a platform key (the chart's ``platformSigning``: a Secret in the
operator's namespace, mounted read-only into the operator pod, named by HARDENED_PLATFORM_KEY_FILE). Then,
for each version its verifier accepted, the operator signs a statement about the version's digest with that
key, and the serving pods' init container requires the envelope and trusts the platform key. The private key
never leaves the operator pod: no tenant namespace holds it, and the trainer, which signs with the tenant's
key, cannot reach it.

decide() stays pure by taking the key as an argument (the same way it takes the clock): ``countersigned`` is
a function of the target, the Deployment as observed, the key and ``now``, so a test passes a key it made and
replays any world. The one impure part, ECDSA's random nonce, never shows: an envelope is made once per
version and then read back from the Deployment's annotation, like the version's other pins, so later passes
(and a restarted operator) build the same Deployment and trigger no rollout.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib

from hardened_model import countersign
from hardened_model.countersign import PlatformKey
from hardened_model.spec import HardenedModel
from .manifests.commands import Countersignature
from .manifests.objects import COUNTERSIGNATURE_ANNOTATION
from .status import ServingTarget

PLATFORM_KEY_ENV = "HARDENED_PLATFORM_KEY_FILE"


def platform_key() -> PlatformKey | None:
    """The platform key the operator was installed with (HARDENED_PLATFORM_KEY_FILE, a PEM EC P-256 private
    key), else None: the feature is off. Read on every pass, as verifier_image is, so a rotated Secret is
    picked up; a file that is missing or not such a key raises ValueError naming the variable and the path
    (at start, handlers.configure stops the operator with it)."""
    path = os.environ.get(PLATFORM_KEY_ENV, "").strip()
    if not path:
        return None
    try:
        return PlatformKey.from_pem(pathlib.Path(path).read_bytes())
    except OSError as exc:
        raise ValueError(f"{PLATFORM_KEY_ENV}: cannot read {path}: {exc.strerror or exc}") from None
    except countersign.CountersignError as exc:
        raise ValueError(f"{PLATFORM_KEY_ENV}: {path}: {exc}") from None


def _pinned(deployment: dict | None, target: ServingTarget, model: HardenedModel, key: PlatformKey) -> dict | None:
    """The envelope the Deployment already carries for this very version, if it still verifies with the
    current key and names this digest and model (a rotated key, or an annotation edited by hand, is not
    reused: the version is signed again, if its verifier's report is there to sign)."""
    ann = ((deployment or {}).get("metadata") or {}).get("annotations") or {}
    if ann.get("hardened.dev/digest") != target.digest or ann.get("hardened.dev/version") != target.version:
        return None
    try:
        envelope = json.loads(ann.get(COUNTERSIGNATURE_ANNOTATION) or "null")
    except ValueError:
        return None
    return _valid(envelope, target, model, key)


def _valid(envelope, target: ServingTarget, model: HardenedModel, key: PlatformKey) -> dict | None:
    """``envelope`` when it verifies with the current key and names this digest and model, else None."""
    try:
        statement = countersign.verify(envelope, key.public_pem)
    except (ValueError, countersign.CountersignError):
        return None
    meta = model.metadata
    return None if countersign.check(statement, digest=target.digest, namespace=meta.namespace or "",
                                     name=meta.name) else envelope


def countersigned(target: ServingTarget | None, model: HardenedModel, deployment: dict | None,
                  released: dict | None, key: PlatformKey | None, *, now: str,
                  kept: dict | None = None) -> ServingTarget | None:
    """``target`` with the platform's envelope, when there is a key. Reused from the Deployment when it pins
    one for this version; else signed now from ``released`` (the verifier's report of the version just
    released: digest, verdict, observedTrainer). A version already serving whose report is gone (its verify
    pods removed) gets none: the operator signs only what its verifier reported, never a digest read back from
    a Deployment that someone else may have written. ``kept``: the envelope a version's record keeps (a
    rollback, versions.py), reused when it verifies as the Deployment's would."""
    if key is None or target is None:
        return target
    envelope = _pinned(deployment, target, model, key) or (_valid(kept, target, model, key) if kept else None)
    if envelope is None and released is not None and released.get("digest") == target.digest:
        meta = model.metadata
        envelope = key.sign(countersign.build_statement(
            digest=target.digest, namespace=meta.namespace or "", name=meta.name, version=target.version,
            verdict=released, observed_trainer=released.get("observedTrainer") or None, time=now))
    if envelope is None:
        return target
    return dataclasses.replace(target, countersignature=Countersignature(envelope, key.public_pem))
