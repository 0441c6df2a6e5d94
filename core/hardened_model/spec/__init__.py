"""The HardenedModel spec: parse, default, validate (pure).

This package is the single source of the API. ``hardened_operator.crd`` generates the CRD's openAPIV3Schema
from these models (as controller-gen does from Go types), so field types, enums, bounds, patterns and
defaults cannot drift apart.

Rules that span fields are written once, in CEL (`CelRule`). The apiserver evaluates them from the CRD's
``x-kubernetes-validations``; ``parse_spec`` evaluates the very same expressions with cel-python, so
``kubectl apply`` and ``hardened-model up`` reject the same spec with the same message.

The modules import one way, each only those before it: ``errors`` (the apiserver's phrasing), ``cel`` (the
rules and their engine), ``sections`` (the pydantic models), ``schema`` (models -> structural schema) and
``load`` (YAML and manifests -> models). Callers import from the package, which is the API they see.
"""
from .cel import CelRule, _cel_program, cel_eval, check_cel, submodels
from .errors import SpecError, go_value
from .load import (LIST_MAPS, load_manifest, load_yaml_documents, parse_manifest, parse_spec, prune_nulls,
                   read_yaml_file, yaml_loader)
from .schema import openapi_schema
from .sections import (API_GROUP, API_VERSION, CLAIM, DNS_LABEL, FEATURE_NAME, IMAGE, JWT_ALGORITHMS, KIND,
                       MAX_NAME_LENGTH, PICKLE_HELP, PLURAL, QUANTITY, SHORT_NAMES, SINGULAR, TRAINER_IMAGE_RULE,
                       Adversarial, Alerts, ArtifactsSection, Augmentation, Auth, AwsSection, Bucket, DataSection,
                       EvaluationSection, Feature, Fraction, GatesSection, HardenedModel, HardenedModelSpec,
                       InitialWeights, Jwt, Keyless, ModelSection, MonitoringSection, ObjectKeyRef, ObjectMeta,
                       Output, Plan, Privacy, ProvenancePolicy, Quantity, Quota, RateLimit, Resources,
                       Sanitization, SecretKeyRef, ServingSection, SigningSection, Tls, Toleration, TrainingSection,
                       Validation, spec_digest, to_wire)

__all__ = [
    # sections
    "API_GROUP", "API_VERSION", "KIND", "PLURAL", "SINGULAR", "SHORT_NAMES", "MAX_NAME_LENGTH", "DNS_LABEL",
    "QUANTITY", "IMAGE", "FEATURE_NAME", "PICKLE_HELP", "TRAINER_IMAGE_RULE", "JWT_ALGORITHMS", "CLAIM",
    "Fraction", "Quantity", "SecretKeyRef", "ObjectKeyRef", "InitialWeights", "ModelSection", "Sanitization",
    "Feature", "DataSection", "Toleration", "Resources", "Adversarial", "Privacy", "Augmentation",
    "TrainingSection", "EvaluationSection", "GatesSection", "ArtifactsSection", "Keyless", "ProvenancePolicy",
    "SigningSection", "Validation", "Bucket", "Quota", "Plan", "RateLimit", "Output", "Tls", "Jwt", "Auth",
    "ServingSection", "Alerts", "MonitoringSection", "AwsSection", "HardenedModelSpec", "ObjectMeta",
    "HardenedModel", "to_wire", "spec_digest",
    # errors, cel, schema, load
    "SpecError", "go_value", "CelRule", "cel_eval", "check_cel", "submodels", "openapi_schema", "LIST_MAPS",
    "prune_nulls", "parse_spec", "parse_manifest", "yaml_loader", "load_yaml_documents", "load_manifest",
    "read_yaml_file",
]
# tests/operator/test_crd.py compiles every rule of the generated CRD with the engine's own (cached) compiler
__all__ += ["_cel_program"]
