"""The documents the parts exchange (docs/contracts.md): the trainer config (build_trainer_config: the
operator's ConfigMap or `up`'s file; hardened_trainer.config reads it) and the serving config
(build_serving_config: serving.json for the model server and both sidecars, a ConfigMap in a cluster and a
file for `hardened-model up`)."""
from __future__ import annotations

from .spec import HardenedModel, HardenedModelSpec, spec_digest, to_wire

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
