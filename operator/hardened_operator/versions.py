"""Which verified version serves (issue 29): the one just released, the one the Deployment pins, or the earlier
one ``spec.serving.version`` pins (a rollback without retraining).

A rollback serves a version that served this model before, so it was verified then: its digest comes from
``status.history`` (written by the operator only), its signed metrics from the version's record (records.py),
judged again against the spec's gates of this pass, and the serving pods' init container verifies its
signature and digest again, with the trust root of this pass, before its server starts. What the record says
is not trusted to vouch for bytes: a record whose digest differs from the history's is refused, and a per-run
key (signing.method ephemeral) comes from the history entry, never from the record. With a platform key, the
countersignature kept in the record is reused only when it verifies for this model and digest.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from hardened_model.gates import check_gates
from hardened_model.spec import HardenedModel
from hardened_model.countersign import PlatformKey
from . import countersigning, runkeys
from .manifests import objects
from .status import ServingTarget, metrics_status


def _json_or_none(text: str | None):
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def uploaded_version_ids(train_message: dict | None) -> dict[str, str] | None:
    """The S3 object versions of what the trainer uploaded (s3:// stores): every later download is pinned to them."""
    return {k: v for k, v in ((train_message or {}).get("versionIds") or {}).items() if v} or None


def serving_target(deployment: dict | None, version: str, released: dict | None,
                   uploaded_ids: dict[str, str] | None, verify_job: dict | None = None, *,
                   ephemeral: bool = False) -> ServingTarget | None:
    """The version to serve: the one just verified (``released``: its verifier's report, None unless it may roll
    out), else the one the Deployment pins already (a failed or unverified version never replaces it), else None.
    A released version's object versions are the trainer's report or, its pod gone, what the Deployment already
    pins for this version. Its observed trainer image is the one its verifier checked (the report echoes it),
    so the init container checks the same, and the annotation keeps it once the Jobs are gone.
    ``ephemeral``: signing.method ephemeral, whose serving pods trust the key ``verify_job`` verified the
    version with, or the one the Deployment pins; a version with neither is no target (runkeys)."""
    ann = (deployment or {}).get("metadata", {}).get("annotations") or {}
    pinned_ids = _json_or_none(ann.get(objects.VERSION_IDS_ANNOTATION))
    if released is not None:
        run_key = runkeys.verified_with(verify_job) if ephemeral else None
        if not ephemeral or run_key:
            return ServingTarget(released["digest"], version,
                                 uploaded_ids or (pinned_ids if ann.get("hardened.dev/version") == version else None),
                                 released.get("provenance") or None, released.get("observedTrainer") or None,
                                 run_key=run_key)
    run_key = runkeys.pinned(deployment, objects.RUN_KEY_ANNOTATION) if ephemeral else None
    if deployment is not None and ann.get("hardened.dev/digest") and (not ephemeral or run_key):
        inits = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("initContainers") or []
        return ServingTarget(ann["hardened.dev/digest"], ann.get("hardened.dev/version", version), pinned_ids,
                             _json_or_none(ann.get(objects.PROVENANCE_ANNOTATION)),
                             _json_or_none(ann.get(objects.OBSERVED_TRAINER_ANNOTATION)), run_key=run_key,
                             gates=any("--gates" in (c.get("args") or []) for c in inits))
    return None


def pin(model: HardenedModel, version: str) -> str | None:
    """The earlier version spec.serving.version pins, None when it pins nothing or the spec's own ``version``."""
    pinned = model.spec.serving.version
    return pinned if pinned and pinned != version else None


@dataclass(frozen=True)
class Rollback:
    """What serving.version asks for: the version, and the target or why there is none (``refused``)."""

    version: str
    target: ServingTarget | None
    refused: str | None = None


def rollback(model: HardenedModel, pinned: str, *, history: list[dict] | None,
             record: tuple[dict | None, dict | None]) -> Rollback:
    """The target of a rollback to ``pinned`` (see the module docstring), or why it cannot serve. ``record``:
    records.read of that version's ConfigMap."""
    field = f'spec.serving.version: "{pinned}"'
    entry = next((e for e in history or [] if isinstance(e, dict) and e.get("version") == pinned and e.get("digest")),
                 None)
    if entry is None:
        served = sorted({e.get("version") for e in history or [] if isinstance(e, dict) and e.get("version")})
        return Rollback(pinned, None, f"{field}: this model never served that version (status.history holds "
                                      f"{', '.join(served) or 'none'}); only a version that served may be pinned")
    training, verification = record
    if not verification or not isinstance(verification.get("metrics"), dict):
        return Rollback(pinned, None, f"{field}: no record of that version's verification (ConfigMap "
                                      f"{model.metadata.name}-version-{pinned}), so its gates cannot be judged")
    if verification.get("digest") != entry["digest"]:
        return Rollback(pinned, None, f"{field}: its record names digest {str(verification.get('digest'))[:16]}, "
                                      f"status.history {entry['digest'][:16]}: the record was changed")
    if entry.get("metrics") and metrics_status(verification) != entry["metrics"]:
        return Rollback(pinned, None, f"{field}: its record's metrics differ from those status.history kept when "
                                      "it served: the record was changed")
    failed = gate_failures(model, verification["metrics"])
    if failed:
        return Rollback(pinned, None, f"{field}: fails the spec's gates now: {'; '.join(failed)}")
    run_key = None
    if model.spec.signing.method == "ephemeral":
        run_key = runkeys.history_key(entry)
        if run_key is None:
            return Rollback(pinned, None, f"{field}: status.history keeps no per-run key for it "
                                          "(signing.method ephemeral), so nothing could verify it")
    ids = {k: v for k, v in (((training or {}).get("report") or {}).get("versionIds") or {}).items() if v} or None
    return Rollback(pinned, ServingTarget(entry["digest"], pinned, ids, verification.get("provenance") or None,
                                          verification.get("observedTrainer") or None, run_key=run_key, gates=True))


NO_COUNTERSIGNATURE = ("its record keeps no platform countersignature that verifies for this model and digest "
                       "(versions served before the record kept one, or a rotated platform key): retrain it to serve "
                       "it again")


def pinned_target(model: HardenedModel, pinned: str, obs, history: list[dict] | None, key: PlatformKey | None, *,
                  now: str) -> tuple[ServingTarget | None, str | None]:
    """(what serves, why the rollback cannot) under spec.serving.version ``pinned``: the pinned version's target
    (countersigned with the envelope its record keeps, when the operator has a platform key), or, refused, the
    version the Deployment serves now, which keeps serving. ``obs``: a reconcile.Observed."""
    ephemeral = model.spec.signing.method == "ephemeral"
    serving = countersigning.countersigned(serving_target(obs.deployment, pinned, None, None, ephemeral=ephemeral),
                                           model, obs.deployment, None, key, now=now)
    rb = rollback(model, pinned, history=history, record=obs.pinned_record)
    if rb.target is None:
        return serving, rb.refused
    target = countersigning.countersigned(rb.target, model, obs.deployment, None, key, now=now,
                                          kept=obs.pinned_countersignature)
    if key is not None and target.countersignature is None:
        return serving, f'spec.serving.version: "{pinned}": {NO_COUNTERSIGNATURE}'
    return target, None


def gate_failures(model: HardenedModel, metrics: dict | None) -> list[str]:
    """The spec's gates that ``metrics`` (a version's signed figures) fail now; none when there are none to judge."""
    if not isinstance(metrics, dict):
        return []
    return [r.describe() for r in check_gates(metrics, model.spec.gates) if not r.passed]


def on_regression(model: HardenedModel, obs, target: ServingTarget | None, report: dict, version: str,
                  history: list[dict] | None, key: PlatformKey | None, *,
                  now: str) -> tuple[ServingTarget | None, str | None]:
    """serving.onGateRegression Rollback: when the version ``target`` serves fails the spec's gates now (its
    verifier's ``report``, judged again, for the spec's own ``version``; its record for an earlier one), the
    newest earlier version of ``history`` that passes them and could be pinned (``rollback``), with why; else
    ``target`` as it is. ``obs``: a reconcile.Observed with ``version_records``."""
    if model.spec.serving.on_gate_regression != "Rollback" or target is None:
        return target, None
    metrics = report.get("metrics") if target.version == version else (
        obs.version_records.get(target.version, (None, None))[1] or {}).get("metrics")
    failed = gate_failures(model, metrics)
    if not failed:  # serving an earlier version because the spec's fails now: say so (history's "stopped")
        own = gate_failures(model, report.get("metrics")) if target.version != version else []
        return target, (f"rolled back to version {target.version}: version {version} fails the gates now "
                        f"({'; '.join(own)}; serving.onGateRegression Rollback)") if own else None
    seen = {target.version}
    for entry in history or []:
        earlier = entry.get("version") if isinstance(entry, dict) else None
        if not earlier or earlier in seen:
            continue
        seen.add(earlier)
        rb = rollback(model, earlier, history=history, record=obs.version_records.get(earlier, (None, None)))
        if rb.target is None:
            continue
        candidate = countersigning.countersigned(rb.target, model, obs.deployment, None, key, now=now,
                                                 kept=obs.version_countersignatures.get(earlier))
        if key is None or candidate.countersignature is not None:
            return candidate, (f"rolled back to version {earlier}: version {target.version} fails the gates now "
                               f"({'; '.join(failed)}; serving.onGateRegression Rollback)")
    return target, None


def released_target(model: HardenedModel, obs, version: str, report: dict, released: bool,
                    uploaded_ids: dict[str, str] | None, key: PlatformKey | None, *, now: str) -> ServingTarget | None:
    """Without a pin: the version just released, else what the Deployment serves (serving_target),
    countersigned when there is a platform key. A release read back from the version's record (its Jobs' pods
    gone) is signed with the envelope that record keeps, or not rolled out: the platform signs only what its
    verifier said in this pass, and a record's digest is not that. ``obs``: a reconcile.Observed."""
    ephemeral = model.spec.signing.method == "ephemeral"
    target = serving_target(obs.deployment, version, report if released else None, uploaded_ids, obs.verify_job,
                            ephemeral=ephemeral)
    target = countersigning.countersigned(target, model, obs.deployment,
                                          report if released and not obs.verify_from_record else None, key,
                                          now=now, kept=obs.own_countersignature)
    if key is not None and released and target is not None and target.countersignature is None:
        target = countersigning.countersigned(serving_target(obs.deployment, version, None, None,
                                                             ephemeral=ephemeral), model, obs.deployment, None,
                                              key, now=now)
    return target
