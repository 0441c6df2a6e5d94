"""Durable records of a model version (issue 29, point 1): what its training and verification reported,
kept in a ConfigMap owned by the HardenedModel (``<model>-version-<version>``), so that the operator never
needs a finished Job's pod to know what it verified.

The reports lived only in the termination messages of the Jobs' pods; node rotation, terminated-pod garbage
collection or a ``kubectl delete pod`` removed them, and the serving model's status turned to
SignatureVerified False while the verified version kept serving (measured on the real cluster). Now every pass
that reads the reports from the pods writes them here (reconcile.desired_children ensures the record), and a
pass that finds the pods gone reads them back (``restore``): a restarted operator reaches the same status.

What a record is trusted for: status, and whether the version may roll out. It is not trusted to vouch for
bytes: the serving pods' init container verifies the signature and the pinned digest of the artifact itself,
and the platform countersignature is made only from a report this pass read from the verify Job's pod
(``Observed.verify_from_record`` keeps it from signing a record someone could have edited).
"""
from __future__ import annotations

import json

from hardened_model.spec import HardenedModel
from .manifests import objects

TRAINING_KEY, VERIFICATION_KEY = "training.json", "verification.json"
COUNTERSIGNATURE_KEY = "countersignature.json"  # the platform's envelope, kept for a rollback (versions.py)


def name(model: HardenedModel, version: str) -> str:
    """The record ConfigMap of ``version`` of the model (objects.names(model).record for the spec's own)."""
    return f"{model.metadata.name}-version-{version}"


def build(model: HardenedModel, *, train_message: dict | None, observed_trainer: dict | None,
          verify_message: dict | None, countersignature: dict | None = None) -> dict | None:
    """The record of the spec's version once its verification reported (None before: a running version has
    nothing to keep). The JSON is canonical (sorted keys), so an unchanged report patches nothing.
    ``countersignature``: the platform's envelope for the version, once made: a rollback to it needs one, and
    the envelope vouches for itself (the init container verifies it with the platform key), so keeping it in a
    ConfigMap that others may write gives nothing away."""
    if not verify_message:
        return None
    n = objects.names(model)
    training = {"report": train_message or {}, "observedTrainer": observed_trainer or None}
    meta = objects._meta(model, n.record, "record", annotations={"hardened.dev/version": n.version})
    data = {TRAINING_KEY: json.dumps(training, sort_keys=True),
            VERIFICATION_KEY: json.dumps(verify_message, sort_keys=True)}
    if countersignature:
        data[COUNTERSIGNATURE_KEY] = json.dumps(countersignature, sort_keys=True)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def kept_countersignature(configmap: dict | None, version: str) -> dict | None:
    """The envelope a record of ``version`` keeps, if any (unverified: countersigning verifies it)."""
    if ((configmap or {}).get("metadata", {}).get("annotations") or {}).get("hardened.dev/version") != version:
        return None
    try:
        envelope = json.loads(((configmap or {}).get("data") or {}).get(COUNTERSIGNATURE_KEY) or "null")
    except ValueError:
        return None
    return envelope if isinstance(envelope, dict) else None


def read(configmap: dict | None, version: str) -> tuple[dict | None, dict | None]:
    """(training, verification) of a record ConfigMap of ``version``, (None, None) when there is none or it
    is another version's or unreadable (then the pods, if any, are all there is)."""
    if not configmap:
        return None, None
    if ((configmap.get("metadata") or {}).get("annotations") or {}).get("hardened.dev/version") != version:
        return None, None
    data = configmap.get("data") or {}
    try:
        training = json.loads(data.get(TRAINING_KEY) or "null")
        verification = json.loads(data.get(VERIFICATION_KEY) or "null")
    except ValueError:
        return None, None
    return (training if isinstance(training, dict) else None,
            verification if isinstance(verification, dict) else None)


def restore(obs, training: dict | None, verification: dict | None) -> None:
    """Fill what the Jobs' pods no longer tell from the version's record (``read``); ``obs``: a
    reconcile.Observed."""
    if verification is None:
        return
    obs.verify_message, obs.verify_from_record = verification, True
    training = training or {}
    if obs.train_message is None:
        obs.train_message = training.get("report") or None
    ran = training.get("observedTrainer") or {}
    if obs.train_image is None and ran.get("image"):
        obs.train_image, obs.train_image_id, obs.train_node = ran["image"], ran.get("imageID"), ran.get("node")
