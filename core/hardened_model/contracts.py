"""The documents the parts exchange (docs/contracts.md): the trainer config (build_trainer_config: the
operator's ConfigMap or `up`'s file; hardened_trainer.config reads it) and the serving config
(build_serving_config: serving.json for the model server and both sidecars, a ConfigMap in a cluster and a
file for `hardened-model up`).

The serving config's reader (ServingConfig, load_serving_config) sits here beside its writer, not in the
server: one module holds both ends of serving.json, so a field added to one is seen missing from the other in
the same change, and a test can read back what the writer renders for every example without the server
image's packages.
"""
from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from .spec import DNS_LABEL, Auth, HardenedModel, HardenedModelSpec, Output, RateLimit, Validation, spec_digest, to_wire

SERVING_CONFIG_API_VERSION = "hardened.dev/serving-config/v1"


def build_serving_config(model: HardenedModel) -> dict:
    spec = model.spec
    wire = spec.serving.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {
        "apiVersion": SERVING_CONFIG_API_VERSION,
        "model": {"name": model.metadata.name, "inputShape": list(spec.model.input_shape),
                  "numClasses": spec.model.num_classes,
                  "labels": spec.model.labels or [str(i) for i in range(spec.model.num_classes)],
                  **({"tabular": True} if spec.data.format == "tabular" else {})},
        "validation": wire["validation"],
        "rateLimit": wire["rateLimit"],
        "output": wire["output"],
        "auth": wire["auth"],
    }


class ModelShape(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)
    name: str = Field(pattern=DNS_LABEL, max_length=63)
    input_shape: list[int] = Field(min_length=1, max_length=4)
    num_classes: int = Field(ge=2)
    labels: list[str]
    tabular: bool = False  # the validation sidecar then checks features from model.json (hardened_server.tabular)


class ServingConfig(BaseModel):
    """serving.json as every serving process reads it. ``extra="forbid"``: a field the writer adds that this
    reader does not know fails at start-up instead of being ignored in silence."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)
    api_version: Literal[SERVING_CONFIG_API_VERSION]  # type: ignore[valid-type]
    model: ModelShape
    validation: Validation
    rate_limit: RateLimit
    output: Output
    auth: Auth = Auth()


class ServingConfigError(ValueError):
    """serving.json cannot be used; the message names the file and the first bad field."""


def load_serving_config(path: str) -> ServingConfig:
    try:
        with open(path, encoding="utf-8") as fh:
            return ServingConfig.model_validate(json.load(fh))
    except OSError as exc:
        raise ServingConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ServingConfigError(f"{path}: not JSON: {exc}") from None
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ServingConfigError(f"{path}: {field}: {first['msg']}") from None

CONFIG_API_VERSION = "hardened.dev/trainer-config/v1"
# A change to any of these sections trains a new model version; serving,
# monitoring, gates and signing trust changes roll out without retraining.
TRAINING_SECTIONS = ("model", "data", "training", "evaluation", "artifacts")


def training_version(spec: HardenedModelSpec) -> str:
    """The model version: 12 hex digits of the training-relevant spec's digest."""
    return spec_digest(spec, *TRAINING_SECTIONS)[:12]


def build_trainer_config(model: HardenedModel, *, output_dir: str, private_key_path: str | None = None,
                         identity_token_path: str | None = None, trust_config_path: str | None = None,
                         device: str = "auto", volumes: dict[str, str] | None = None) -> dict:
    """The trainer config for one HardenedModel (JSON-ready dict); ``volumes``: where the trainer finds each
    PersistentVolumeClaim a pvc:// URI of the spec names (claim -> mount path)."""
    signing = {k: v for k, v in {"privateKeyPath": private_key_path, "identityTokenPath": identity_token_path,
                                 "trustConfigPath": trust_config_path}.items() if v}
    return {
        "apiVersion": CONFIG_API_VERSION,
        "modelName": model.metadata.name,
        "namespace": model.metadata.namespace,
        "version": training_version(model.spec),
        "spec": to_wire(model.spec),
        "outputDir": output_dir,
        "signing": signing,
        "device": device,
        **({"volumes": dict(volumes)} if volumes else {}),
    }
