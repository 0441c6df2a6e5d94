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


class MetricsStatus(_Status):
    """Figures from the signed metrics.json of the current model version."""

    clean_accuracy: float | None = None
    robust_accuracy: float | None = None
    epsilon: float | None = Field(default=None, description="Privacy budget spent; absent without DP-SGD.")
    membership_auc: float | None = Field(default=None, alias="membershipAUC")


class ArtifactStatus(_Status):
    """The verified artifact."""

    uri: str | None = None
    digest: str | None = Field(default=None, description="sha256 over the signed manifest of the model directory.")
    version_id: str | None = Field(default=None, description="S3 object versionId of the signature bundle.")
    signer: str | None = None


class ServingStatus(_Status):
    """The serving Deployment."""

    url: str | None = None
    ready_replicas: int | None = Field(default=None, ge=0)
    served_digest: str | None = Field(default=None, description="Digest the serving pods verify and load.")


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
