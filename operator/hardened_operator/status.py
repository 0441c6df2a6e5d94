"""HardenedModel status: its schema (the CRD is generated from these models).

Conditions follow the metav1.Condition shape so ``kubectl wait --for=condition=Ready``
and Argo CD health checks work; every condition and the status itself carry
``observedGeneration`` (kubernetes PR #97408).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

PHASES = ("Pending", "Training", "Verifying", "RollingOut", "Serving", "Failed")
CONDITION_TYPES = ("TrainingSucceeded", "GatesPassed", "SignatureVerified", "ServingReady", "Ready")


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


# ----------------------------------------------------------- computation
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
    """The whole status: phase, the five conditions in a fixed order, observedGeneration, other fields.

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


def job_state(job: dict | None) -> tuple[str, str, str]:
    """(state, reason, message) of a Job: pending | running | succeeded | failed."""
    if job is None:
        return "pending", "NotCreated", "not created yet"
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("status") != "True":
            continue
        if c.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "succeeded", "Completed", c.get("message") or "completed"
        if c.get("type") in ("Failed", "FailureTarget"):
            return "failed", c.get("reason") or "Failed", c.get("message") or "failed"
    if (job.get("status") or {}).get("succeeded"):
        return "succeeded", "Completed", "completed"
    return "running", "Running", "running"


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
