"""The trainer config: the versioned contract between the operator (or `up`) and the trainer.

One JSON document. The operator writes it to a ConfigMap, ``hardened-model up``
to a file; the trainer is its only reader. It embeds the whole defaulted spec
(wire form), which is parsed by the same ``parse_spec`` as everywhere else, plus
what only the runtime knows: where to write, where the key is mounted.

Torch-free on purpose: the operator builds and validates configs without it.

Example::

    {"apiVersion": "hardened.dev/trainer-config/v1",
     "modelName": "digits-demo", "namespace": "default",
     "version": "3f9a0c1d2e4b",
     "spec": {...},                                   # HardenedModel .spec, defaulted
     "outputDir": "/artifacts/digits-demo/3f9a0c1d2e4b",
     "signing": {"privateKeyPath": "/var/run/secrets/hardened/signing/private.pem"},
     "device": "auto",
     "volumes": {"baselines": "/volumes/baselines"}}  # optional: pvc:// claims of model.initialWeights

An s3:// store gets the signed version uploaded after signing; pvc:// and
file:// stores are written in place (outputDir lies on the volume).
"""
from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from hardened_model.contracts import CONFIG_API_VERSION
from hardened_model.spec import DNS_LABEL, HardenedModelSpec, SpecError, parse_spec


class ConfigError(ValueError):
    """A trainer config that cannot be used; names each field (``config.<path>``)."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{p}: {m}" for p, m in problems))


class _Config(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True,
                              strict=True)


class SigningRuntime(_Config):
    """Where the signing material is at run time."""

    private_key_path: str | None = Field(default=None, min_length=1,
                                         description="PEM private key (spec.signing.method key).")
    identity_token_path: str | None = Field(default=None, min_length=1,
                                            description="OIDC token file for Sigstore keyless (a projected "
                                                        "service-account token with audience sigstore).")
    use_ambient_credentials: bool = False
    trust_config_path: str | None = Field(default=None, min_length=1,
                                          description="Sigstore ClientTrustConfig JSON (private Sigstore).")


class TrainerConfig(_Config):
    api_version: Literal[CONFIG_API_VERSION]  # type: ignore[valid-type]
    model_name: str = Field(pattern=DNS_LABEL, max_length=63)
    namespace: str = Field(default="default", pattern=DNS_LABEL, max_length=63)
    version: str = Field(pattern=r"^[0-9a-f]{12,64}$",
                         description="Training digest: names the artifact version (<store>/<model>/<version>/).")
    spec: HardenedModelSpec
    output_dir: str = Field(min_length=1, description="Local folder that receives model/ and model.sig.")
    signing: SigningRuntime = Field(default_factory=SigningRuntime)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    volumes: dict[str, str] = Field(default_factory=dict,
                                    description="pvc:// claim name -> where it is mounted (model.initialWeights).")

    @field_validator("spec", mode="before")
    @classmethod
    def _parse_spec(cls, value: Any) -> HardenedModelSpec:
        if isinstance(value, HardenedModelSpec):
            return value
        return parse_spec(value, path="config.spec")  # SpecError is a ValueError: reported below


def parse_config(data: Any) -> TrainerConfig:
    """Validate a config mapping; ConfigError names every bad field as ``config.<path>``."""
    if not isinstance(data, dict):
        raise ConfigError([("config", f"must be a JSON object, got {type(data).__name__}")])
    try:
        cfg = TrainerConfig.model_validate(data)
    except ValidationError as err:
        problems = []
        for e in err.errors(include_url=False):
            ctx_err = (e.get("ctx") or {}).get("error")
            if isinstance(ctx_err, SpecError):
                problems += ctx_err.problems
                continue
            path = "config" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"])
            msg = "Required value" if e["type"] == "missing" else (
                "unknown field" if e["type"] == "extra_forbidden" else f"Invalid value: {e['input']!r}: {e['msg']}")
            problems.append((path, msg))
        raise ConfigError(problems) from None
    if cfg.spec.signing.method == "key" and not cfg.signing.private_key_path:
        raise ConfigError([("config.signing.privateKeyPath", "Required value: spec.signing.method is key")])
    return cfg


def load_config(path: str) -> TrainerConfig:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise ConfigError([("config", f"cannot read {path}: {exc.strerror}")]) from None
    except json.JSONDecodeError as exc:
        raise ConfigError([("config", f"{path} is not JSON: {exc}")]) from None
    return parse_config(data)
