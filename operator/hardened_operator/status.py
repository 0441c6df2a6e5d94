"""HardenedModel status: its schema (the CRD is generated from these models).

Conditions follow the metav1.Condition shape so ``kubectl wait --for=condition=Ready``
and Argo CD health checks work; every condition and the status itself carry
``observedGeneration`` (kubernetes PR #97408).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from hardened_model.gates import STATUS_METRICS
from hardened_model.signing import SIGNATURE_NAME

PHASES = ("Pending", "Training", "Verifying", "RollingOut", "Serving", "Failed")
CONDITION_TYPES = ("PolicyAllowed", "TrainingSucceeded", "GatesPassed", "SignatureVerified", "ArtifactPinned",
                   "ServingReady", "Ready")


class _Status(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Condition(_Status):
    """One metav1.Condition."""

    type: str = Field(pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                              r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$", max_length=316)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", min_length=1, max_length=1024)
    message: str = Field(default="", max_length=32768)
    last_transition_time: str = Field(json_schema_extra={"format": "date-time"})
    observed_generation: int | None = Field(default=None, ge=0)


class TrainingStatus(_Status):
    """The training Job of the current model version."""

    job_name: str | None = None
    config_digest: str | None = Field(default=None, description="sha256 of the training-relevant spec.")
    start_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    completion_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    image_id: str | None = Field(default=None, alias="imageID",
                                 description="The trainer container's image ID as the kubelet reported it.")
    data_digest: str | None = Field(default=None, description="sha256 of the training data the trainer read.")
    resumed_from_epoch: int | None = Field(
        default=None, ge=0, description="The run resumed from its checkpoint of this epoch (a retried pod): the "
                                        "privacy accountant kept every step taken before.")
    world_size: int | None = Field(default=None, ge=1, description="Ranks of a training.distributed run.")


class MetricsStatus(_Status):
    """Figures from the signed metrics.json of the current model version."""

    clean_accuracy: float | None = None
    robust_accuracy: float | None = None
    epsilon: float | None = Field(default=None, description="Privacy budget spent; absent without DP-SGD.")
    membership_auc: float | None = Field(default=None, alias="membershipAUC")
    # tabular models: the positive class (data.positiveClass), the figures its gates read
    recall: float | None = None
    precision: float | None = None
    pr_auc: float | None = Field(default=None, alias="prAUC")
    balanced_accuracy: float | None = None
    robust_recall: float | None = None


class ArtifactStatus(_Status):
    """The verified artifact."""

    uri: str | None = None
    digest: str | None = Field(default=None, description="sha256 over the signed manifest of the model directory.")
    version_id: str | None = Field(default=None, description="S3 object versionId of the signature bundle.")
    signer: str | None = None
    data_digest: str | None = Field(default=None, description="Training data sha256, from the signed provenance.")
    trainer_image: str | None = Field(default=None, description="Trainer image, from the signed provenance.")
    trainer_image_digest: str | None = Field(default=None, description="Its digest, when given by digest.")


class ServingStatus(_Status):
    """The serving Deployment."""

    url: str | None = None
    ready_replicas: int | None = Field(default=None, ge=0)
    served_digest: str | None = Field(default=None, description="Digest the serving pods verify and load.")
    data_digest: str | None = Field(default=None, description="The served version's training data sha256.")
    trainer_image_digest: str | None = Field(default=None, description="The served version's trainer image "
                                                                       "digest (or reference, given by tag).")


class FailureStatus(_Status):
    """The last failure, kept until a later version succeeds."""

    stage: str | None = None
    reason: str | None = None
    message: str | None = None
    time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})


class HistoryEntry(_Status):
    """One version that served (issue 29): from when the operator saw its rollout complete to when another's did."""

    version: str
    digest: str
    served_from: str = Field(json_schema_extra={"format": "date-time"})
    served_to: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    stopped: str | None = Field(default=None, description="Why it stopped serving.")
    metrics: MetricsStatus | None = Field(default=None, description="Its verified figures, when this operator "
                                                                    "verified it.")
    run_key: str | None = Field(default=None, description="signing.method ephemeral: the per-run public key it "
                                                          "served with, which a rollback to it trusts.")


HISTORY_LIMIT = 10


class HardenedModelStatus(_Status):
    """Observed state of a HardenedModel, computed from its children."""

    observed_generation: int | None = Field(default=None, ge=0)
    phase: Literal[PHASES] | None = None  # type: ignore[valid-type]
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    training: TrainingStatus | None = None
    metrics: MetricsStatus | None = None
    artifact: ArtifactStatus | None = None
    serving: ServingStatus | None = None
    last_failure: FailureStatus | None = None
    history: list[HistoryEntry] | None = Field(
        default=None, max_length=HISTORY_LIMIT, description=f"The versions that served, newest first (at most "
                                                            f"{HISTORY_LIMIT}).")


# ----------------------------------------------------------- computation
class Cond(NamedTuple):
    """A condition as decided; build_status adds lastTransitionTime and observedGeneration."""

    status: str
    reason: str
    message: str


class JobState(NamedTuple):
    """Where a Job stands: ``state`` is pending | running | succeeded | failed; reason and message are its own."""

    state: str
    reason: str
    message: str


@dataclass(frozen=True)
class ServingTarget:
    """The version the Deployment is to serve and what its pods pin: the digest they verify before loading, the
    S3 object versions they download (s3:// stores), the signed provenance summary. It is carried in the
    Deployment's annotations, so a later pass knows what is served after the Jobs and their messages are gone.
    ``observed_trainer``: what the kubelet ran for the version's training pod, which the init container checks
    the provenance against (issue 27). ``countersignature``: the platform's envelope for this version and the
    key's public PEM (manifests.commands.Countersignature), when the operator has a platform key. ``run_key``:
    signing.method ephemeral's per-run public key, the only one the serving pods may verify it with (runkeys)."""

    digest: str
    version: str
    version_ids: dict[str, str] | None = None
    provenance: dict | None = None
    observed_trainer: dict | None = None
    countersignature: object | None = None
    run_key: str | None = None
    # the init container judges the signed metrics.json against the spec's gates too: a version served again
    # (a rollback) whose record's figures anyone who may write ConfigMaps could have edited (versions.py)
    gates: bool = False


def condition(previous: list[dict], type_: str, status: str, reason: str, message: str, *, generation: int,
              now: str) -> dict:
    """A condition; ``lastTransitionTime`` moves only when ``status`` changes (metav1.Condition semantics)."""
    old = next((c for c in previous or [] if c.get("type") == type_), None)
    since = old["lastTransitionTime"] if old and old.get("status") == status and old.get(
        "lastTransitionTime") else now
    return {"type": type_, "status": status, "reason": reason, "message": message[:32768],
            "lastTransitionTime": since, "observedGeneration": generation}


def build_status(previous: dict, *, generation: int, phase: str, conditions: dict[str, tuple[str, str, str]],
                 now: str, **fields) -> dict:
    """The whole status: phase, the conditions in a fixed order (CONDITION_TYPES), observedGeneration, other fields.

    ``conditions`` maps a type to (status, reason, message). Fields passed as
    None are left out, so status never carries stale nulls.
    """
    prev_conds = (previous or {}).get("conditions") or []
    conds = [condition(prev_conds, t, *conditions[t], generation=generation, now=now)
             for t in CONDITION_TYPES if t in conditions]
    out = {"observedGeneration": generation, "phase": phase, "conditions": conds}
    for key, value in fields.items():
        if isinstance(value, dict):  # a merge patch would delete null members: never write them
            value = {k: v for k, v in value.items() if v is not None} or None
        if value is not None:
            out[key] = value
    return out


def job_state(job: dict | None) -> JobState:
    """(state, reason, message) of a Job: pending | running | succeeded | failed."""
    if job is None:
        return JobState("pending", "NotCreated", "not created yet")
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("status") != "True":
            continue
        if c.get("type") in ("Complete", "SuccessCriteriaMet"):
            return JobState("succeeded", "Completed", c.get("message") or "completed")
        if c.get("type") in ("Failed", "FailureTarget"):
            return JobState("failed", c.get("reason") or "Failed", c.get("message") or "failed")
    if (job.get("status") or {}).get("succeeded"):
        return JobState("succeeded", "Completed", "completed")
    return JobState("running", "Running", "running")


def _terminated(cs: dict) -> dict:
    """The container's current or last termination (a restarting container shows it in lastState)."""
    return ((cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {})


def _refusal(term: dict) -> str:
    """The verifier's reason from its termination message (JSON), else the raw message or exit code."""
    import json

    text = term.get("message") or ""
    try:
        return json.loads(text).get("reason") or text
    except ValueError:
        return text.strip()[-500:] or f"exit code {term.get('exitCode')}"


def pod_problems(pods: list[dict]) -> list[tuple[str, str]]:
    """Why serving pods are not ready, as (reason, message), worst first: a verify-model init container that
    refused the artifact (ArtifactRefused), a pod the scheduler cannot place (Unschedulable), an image that
    cannot be pulled (ImagePullFailed), a crashing container (CrashLoopBackOff). The Deployment only says
    "0/1 ready"; these are what `kubectl describe pod` would show (issue 14). Ready pods have none (an old
    failure of theirs, kept in lastState, is over), nor do pods on their way out."""
    found: list[tuple[int, str, str]] = []
    for pod in pods:
        name = (pod.get("metadata") or {}).get("name", "?")
        st = pod.get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
        if ready or (pod.get("metadata") or {}).get("deletionTimestamp") or st.get("phase") in ("Succeeded",
                                                                                                  "Failed"):
            continue
        for cs in st.get("initContainerStatuses") or []:
            term = _terminated(cs)
            if cs.get("name") == "verify-model" and term and term.get("exitCode") not in (None, 0):
                found.append((0, "ArtifactRefused", f"pod {name}: init container verify-model refused the "
                                                    f"artifact ({cs.get('restartCount', 0)} restarts): "
                                                    f"{_refusal(term)}"))
        for c in st.get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
                found.append((1, "Unschedulable", f"pod {name} cannot be scheduled: {c.get('message')}"))
        for cs in (st.get("initContainerStatuses") or []) + (st.get("containerStatuses") or []):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                                         "ErrImageNeverPull"):
                found.append((2, "ImagePullFailed", f"pod {name}: container {cs.get('name')}: "
                                                    f"{waiting.get('reason')}: {waiting.get('message', '')}"))
            elif waiting.get("reason") == "CrashLoopBackOff" and cs.get("name") != "verify-model":
                term = _terminated(cs)
                found.append((3, "CrashLoopBackOff", f"pod {name}: container {cs.get('name')} keeps exiting "
                                                     f"(exit code {term.get('exitCode')}): {_refusal(term)}"))
    found.sort(key=lambda f: f[0])
    return [(reason, message) for _, reason, message in found]


# ------------------------------------------- one pass: conditions, phase, fields
POLICY_KIND = "HardenedModelPolicy"
_NAMED = re.compile(POLICY_KIND + r" ([a-z0-9](?:[-a-z0-9.]*[a-z0-9])?)(?=[:,])")


def policy_condition(refusals: list[str], *, selecting: list[str], namespace: str) -> Cond:
    """PolicyAllowed: every line of every HardenedModelPolicy that refuses the spec (``refusals``, each
    ``HardenedModelPolicy NAME: FIELD: WHAT``), else the policies that select the namespace (``selecting``).
    Each policy is named ``HardenedModelPolicy NAME`` followed by ``:`` or ``,``, which is what
    governing_policies reads back."""
    if refusals:
        return Cond("False", "PolicyViolation", "; ".join(refusals))
    if not selecting:
        return Cond("True", "Allowed", f"no {POLICY_KIND} selects namespace {namespace}")
    named = ", ".join(f"{POLICY_KIND} {name}" for name in selecting)
    return Cond("True", "Allowed", f"the spec meets {named}, which select{'s' if len(selecting) == 1 else ''} "
                                   f"namespace {namespace}")


def governing_policies(status: dict | None) -> set[str]:
    """The policies a model's last pass found selecting its namespace (from its PolicyAllowed condition): a
    change to one of them must reach the model even when the policy no longer selects it."""
    cond = next((c for c in (status or {}).get("conditions") or [] if c.get("type") == "PolicyAllowed"), {})
    return set(_NAMED.findall(cond.get("message") or ""))


def is_verified(verification: JobState, report: dict) -> bool:
    """The verifier's word on the signature counts once its Job finished; a failed Job may still have verified
    the signature (and failed a gate)."""
    return verification.state in ("succeeded", "failed") and report.get("verified") is True


def training_condition(training: JobState, *, job_name: str, report: dict | None,
                       failures: list[dict] | None = None) -> Cond:
    """TrainingSucceeded. A failed trainer's termination message (``report``) says why, where the Job only
    says that its pod failed. ``failures``: a distributed run's failed pods (kube.failed_ranks), each named
    with its node and rank and what it said, first failure first: that one is the cause."""
    if training.state == "succeeded":
        resumed = (report or {}).get("resumedFromEpoch")
        return Cond("True", "Succeeded", f"training Job {job_name} completed" + (
            f" (resumed from its checkpoint of epoch {resumed})" if resumed is not None else ""))
    if training.reason == "NotStarted":  # a HardenedModelPolicy refuses the spec
        return Cond("Unknown", "NotStarted", f"training Job {job_name} {training.message}")
    if training.state == "failed":
        reason = "TrainingFailed" if training.reason in ("Failed", "BackoffLimitExceeded", "PodFailurePolicy") \
            else training.reason
        if failures:
            ranks = "; ".join(
                f"node {f.get('node', '?')}{' rank ' + str(f['rank']) if 'rank' in f else ''} (pod {f['pod']}, exit "
                f"{f['exitCode']}): {f['message'] or 'no message'}" for f in failures[:8])
            # the Job's own message first: it names the pod that matched the FailJob rule, which may be gone
            # already (a deleted pod leaves once the Job controller counted it)
            return Cond("False", reason, f"training Job {job_name} failed ({training.reason}): {training.message}; "
                                         f"{ranks}")
        return Cond("False", reason, f"training Job {job_name} failed ({training.reason}): "
                                     f"{(report or {}).get('message') or training.message}")
    return Cond("Unknown", "Training", f"training Job {job_name} is running")


def pinning_condition(training: JobState, report: dict | None) -> Cond:
    """ArtifactPinned, for s3:// stores only (issue 29): every object of the version pinned by its S3
    versionId, which the verifier and the serving pods download exactly; in a bucket without versioning the
    trainer gets none, and only the digest then stands between the keys and whoever writes them next. Not
    part of Ready: the digest pin still refuses changed bytes; this says the version could be overwritten."""
    if training.state != "succeeded" or report is None:
        return Cond("Unknown", "NotUploaded", "the version is not uploaded yet")
    ids = report.get("versionIds") or {}
    if ids and all(ids.values()):
        return Cond("True", "VersionIdsPinned", f"each of the version's {len(ids)} objects is pinned by its S3 "
                                                "versionId")
    return Cond("False", "BucketUnversioned", "the bucket returned no S3 versionId for the version's objects "
                                              "(versioning off): they are pinned by their digest only, and a "
                                              "later write to the same keys replaces them; turn on bucket "
                                              "versioning")


def verification_conditions(verification: JobState, report: dict) -> tuple[Cond, Cond]:
    """SignatureVerified and GatesPassed. Gates are judged on a verified artifact only: metrics in bytes that
    nobody vouches for prove nothing."""
    if verification.reason == "NotStarted":  # a HardenedModelPolicy refuses the spec
        waiting = Cond("Unknown", "NotStarted", f"verification Job {verification.message}")
        return waiting, waiting
    if verification.state in ("pending", "running"):
        waiting = Cond("Unknown", "Pending", "waiting for the verification Job")
        return waiting, waiting
    if is_verified(verification, report):
        signature = Cond("True", "Verified", f"signed by {report.get('signer')}; digest {report.get('digest')}")
        if report.get("gatesPassed"):
            return signature, Cond("True", "Passed", "; ".join(report.get("gates") or []) or "no gates configured")
        return signature, Cond("False", "GatesFailed", report.get("reason") or "a gate failed")
    return (Cond("False", "VerificationFailed",
                 report.get("reason") or f"verification Job failed: {verification.message}"),
            Cond("Unknown", "NotChecked", "signature did not verify"))


def serving_condition(target: ServingTarget | None, *, complete: bool, ready_replicas: int, replicas: int,
                      problems: list[tuple[str, str]]) -> Cond:
    """ServingReady for the target version. An incomplete rollout names its worst pod problem (pod_problems):
    the Deployment only counts pods (issue 14), and the previous rollout's pods may still serve meanwhile."""
    if target is None:
        return Cond("False", "NotDeployed", "no verified version yet")
    if complete:
        return Cond("True", "Ready", f"{ready_replicas}/{replicas} replicas serving version {target.version} "
                                     f"(digest {target.digest[:16]})")
    if problems:
        keeps = f"; {ready_replicas} ready pod(s) of the previous rollout keep serving" if ready_replicas else ""
        return Cond("False", problems[0][0], f"{ready_replicas}/{replicas} replicas ready; {problems[0][1]}" + keeps)
    return Cond("False", "RollingOut", f"{ready_replicas}/{replicas} replicas ready")


def current_phase(conditions: dict[str, Cond], *, training: JobState, verification: JobState, released: bool,
                  complete: bool, stuck: str | None, deployment: str,
                  kept_version: str | None, pinned: bool = False,
                  pin_refused: str | None = None) -> tuple[str, str | None, Cond]:
    """(phase, the stage that failed or None, the condition that explains the phase: Ready's reason and message).

    A policy's refusal outranks everything: the operator then does nothing for the spec (issue 27). Otherwise a
    failure outranks work in progress, and a failed rollout every other failure: a version that cannot start
    needs the user even while the next version trains. ``released``: the verified version may roll out (gates
    passed, or failed under signing.mode Warn). ``stuck``: the Deployment controller's verdict on the target's
    rollout. ``kept_version``: the version that keeps serving, said on a failure (for a policy's refusal also
    the spec's own version, which serves on although the policy now refuses it). ``pinned``: spec.serving.version
    pins an earlier version, which is then all there is to serve (the spec's own neither trains nor rolls out);
    ``pin_refused``: why that version cannot serve (versions.rollback).
    """
    serving = conditions["ServingReady"]
    policy = conditions.get("PolicyAllowed")
    if policy is not None and policy.status == "False":
        why = Cond("False", policy.reason, policy.message)
        return "Failed", "policy", why if kept_version is None else Cond(
            why.status, why.reason, why.message + f"; version {kept_version} keeps serving")
    if serving.reason == "ArtifactRefused":
        # The new pods' init container refuses the bytes it would load (changed after verification, or signed by
        # someone else): waiting cannot help. The rollout budget keeps the previous pods serving meanwhile.
        failed, phase, why = "rollout", "Failed", serving
    elif stuck:
        # The new pods never became ready before the Deployment's progress deadline: the init container
        # refused the artifact (changed after verification) or the server crashed. The rollout budget keeps the
        # previous pods serving; the operator says so and does not retry a version that cannot start.
        failed, phase = "rollout", "Failed"
        why = Cond("False", "RolloutStuck", f"Deployment {deployment} did not progress ({stuck}); the pods of the "
                                            "previous version keep serving; kubectl describe pods shows why the new "
                                            "ones do not start")
    elif pin_refused:
        failed, phase, why = "rollback", "Failed", Cond("False", "RollbackRefused", pin_refused)
    elif pinned:
        failed, phase, why = None, "Serving" if complete else "RollingOut", serving
    elif training.state == "failed":
        failed, phase, why = "training", "Failed", conditions["TrainingSucceeded"]
    elif verification.state in ("succeeded", "failed") and not released:
        failed, phase = "verification", "Failed"
        signature = conditions["SignatureVerified"]
        why = signature if signature.status == "False" else conditions["GatesPassed"]
    elif training.state == "running":
        failed, phase, why = None, "Training", conditions["TrainingSucceeded"]
    elif verification.state in ("pending", "running"):
        failed, phase, why = None, "Verifying", conditions["SignatureVerified"]
    else:
        failed, phase, why = None, "Serving" if complete else "RollingOut", serving
    if failed and kept_version is not None:
        why = Cond(why.status, why.reason, why.message + f"; version {kept_version} keeps serving")
    return phase, failed, why


def ready_condition(why: Cond, *, serving: Cond, rolled_out: bool, warned: bool) -> Cond:
    """Ready: True once the spec's own version is rolled out completely (``rolled_out``; an older version serving
    is not this spec ready), else the phase's cause. A version served past a failed gate (signing.mode Warn,
    ``warned``) says so."""
    if not rolled_out:
        return Cond("False", why.reason, why.message)
    if warned:
        return Cond("True", "ReadyWithWarnings", f"{serving.message}; gates failed (signing.mode Warn)")
    return Cond("True", "Ready", serving.message)


def last_failure(previous: dict, failed: str | None, why: Cond, *, settled: bool, now: str) -> dict | None:
    """status.lastFailure: this pass's failure, timed when it first appeared (the same stage and reason keep
    their time), else the previous one until ``settled`` (the spec's own version serves): the failure stays on
    record while an older version serves in its place or the next one is on its way."""
    if failed:
        same = previous.get("reason") == why.reason and previous.get("stage") == failed
        return {"stage": failed, "reason": why.reason, "message": why.message,
                "time": previous.get("time") if same else now}
    return None if settled else previous or None


def history_status(previous: list[dict] | None, target: ServingTarget | None, *, complete: bool,
                   metrics: dict | None, now: str, stopped: str | None = None) -> list[dict] | None:
    """status.history, newest first, at most HISTORY_LIMIT: a version enters once its rollout completed (it
    serves every replica); the one it replaced gets servedTo and why. ``metrics``: the entering version's
    verified figures (metrics_status), when this pass has them; ``stopped``: why the one it replaced stopped, when
    not simply replaced (a rollback)."""
    entries = [dict(e) for e in previous or [] if isinstance(e, dict) and e.get("digest")]
    if target is None or not complete:
        return entries or None
    head = entries[0] if entries else None
    if head and (head.get("digest"), head.get("version")) == (target.digest, target.version):
        if metrics and not head.get("metrics"):
            head["metrics"] = metrics
        return entries
    if head and not head.get("servedTo"):
        head.update(servedTo=now, stopped=stopped or f"replaced by version {target.version}")
    entries.insert(0, {"version": target.version, "digest": target.digest, "servedFrom": now,
                       **({"metrics": metrics} if metrics else {}), **({"runKey": target.run_key} if target.run_key
                                                                         else {})})
    return entries[:HISTORY_LIMIT]


def training_status(job: dict | None, *, job_name: str, config_digest: str, image_id: str | None,
                    report: dict | None) -> dict:
    """status.training, from the Job and the trainer's termination message (``report``)."""
    times = (job or {}).get("status") or {}
    return {"jobName": job_name, "configDigest": config_digest, "startTime": times.get("startTime"),
            "completionTime": times.get("completionTime"), "imageID": image_id,
            "dataDigest": (report or {}).get("dataDigest"), "resumedFromEpoch": (report or {}).get("resumedFromEpoch"),
            "worldSize": (report or {}).get("worldSize")}


def metrics_status(report: dict | None) -> dict | None:
    """status.metrics from the verified report (None before one), rounded for display (`kubectl get hm` prints
    status as stored); the signed metrics.json keeps every digit."""
    figures = (report or {}).get("metrics")
    if not figures:
        return None
    return {k: round(figures[k], 4) for k in STATUS_METRICS if figures.get(k) is not None} or None


def artifact_status(uri: str, report: dict | None, *, version_ids: dict[str, str] | None) -> dict:
    """status.artifact: where the version lies and, once verified (``report``, else None), what vouches for it.
    versionId is the S3 version of the signature bundle, which pins all the rest."""
    if report is None:
        return {"uri": uri} if uri else {}
    version_id = next((v for k, v in (version_ids or {}).items() if k.endswith("/" + SIGNATURE_NAME)), None)
    return {k: v for k, v in {"uri": uri, "digest": report.get("digest"), "signer": report.get("signer"),
                              "versionId": version_id, **(report.get("provenance") or {})}.items() if v}


def serving_status(target: ServingTarget | None, *, url: str, ready_replicas: int) -> dict | None:
    """status.serving: what the Deployment serves, from the target (its provenance is the signed summary the
    Deployment's annotation carries, so it outlives the Jobs)."""
    if target is None:
        return None
    prov = target.provenance or {}
    return {k: v for k, v in {"url": url, "readyReplicas": ready_replicas, "servedDigest": target.digest,
                              "dataDigest": prov.get("dataDigest"),
                              "trainerImageDigest": prov.get("trainerImageDigest") or prov.get("trainerImage")
                              }.items() if v is not None}
