"""pydantic models -> Kubernetes structural OpenAPI schema (pure), as controller-gen does from Go types.

The sections are the one definition of the API; this module turns pydantic's JSON Schema into a
Kubernetes *structural* schema (no $ref, no nullable unions, boolean exclusiveMinimum, int-or-string),
attaches each model's CEL rules as ``x-kubernetes-validations`` and every default (a section defaults to its
fully defaulted value). ``hardened_operator.crd`` wraps it into the CustomResourceDefinition; the parser
reads it to phrase errors as the apiserver does.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .cel import submodels
from .sections import MAX_NAME_LENGTH, HardenedModelSpec, to_wire

_KEEP = {"type", "description", "properties", "required", "items", "enum", "minimum", "maximum",
         "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern", "minItems",
         "maxItems", "maxProperties", "additionalProperties", "default", "format"}


def _models_by_name(*roots: type[BaseModel]) -> dict[str, type[BaseModel]]:
    out: dict[str, type[BaseModel]] = {}

    def walk(cls):
        if cls.__name__ in out:
            return
        out[cls.__name__] = cls
        for field in cls.model_fields.values():
            for sub in submodels(field.annotation):
                walk(sub)

    for root in roots:
        walk(root)
    return out


def _field_defaults(cls: type[BaseModel]) -> dict[str, Any]:
    """Defaults pydantic leaves out of JSON Schema: those made by a default_factory."""
    out = {}
    for name, field in cls.model_fields.items():
        if field.default_factory is None:
            continue
        value = field.default_factory()
        key = field.alias or name
        if isinstance(value, BaseModel):
            # A section defaults to its fully defaulted value, not to {}: the result is the same (structural
            # defaulting would recurse into {}), but the apiserver checks a default against the section's CEL
            # rules as written, without nested defaults, and `{}` fails every rule that reads a field
            # ("no such key: enabled"; issue 14, found on a real v1.36 apiserver).
            out[key] = to_wire(value)
        else:
            out[key] = value
    return out


def _convert(node: dict, defs: dict, models: dict[str, type[BaseModel]]) -> dict:
    cls = None
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        cls = models.get(name)
        node = {**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}
    if "anyOf" in node:
        if node.get("x-kubernetes-int-or-string"):
            out = {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}
            out.update({k: node[k] for k in ("description", "default", "pattern") if k in node})
            return out
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"not structural: {node}")
        rest = {k: v for k, v in node.items() if k != "anyOf" and not (k == "default" and v is None)}
        return _convert({**branches[0], **rest}, defs, models)
    if "const" in node:
        node = {**{k: v for k, v in node.items() if k != "const"}, "enum": [node["const"]]}
    if "title" in node and cls is None and node.get("type") == "object" and "properties" in node:
        cls = models.get(node["title"])
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-"):
            out[key] = value
        elif key not in _KEEP:
            continue
        elif key == "properties":
            out[key] = {k: _convert(v, defs, models) for k, v in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs, models)
        elif key == "additionalProperties":
            # `false` is not allowed beside properties in a structural schema; unknown
            # fields are rejected by kubectl's strict field validation instead.
            if isinstance(value, dict):
                out[key] = _convert(value, defs, models)
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound], out[key] = value, True
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if cls is not None:
        for key, default in _field_defaults(cls).items():
            out["properties"][key].setdefault("default", default)
        rules = getattr(cls, "cel_rules", ())
        if rules:
            out["x-kubernetes-validations"] = [r.to_crd() for r in rules]
    return out


def build_schema(model: type[BaseModel]) -> dict:
    """The structural openAPIV3Schema of one pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _convert({**raw, "title": model.__name__}, defs, _models_by_name(model))


def openapi_schema(status: dict | None = None) -> dict:
    """The resource's openAPIV3Schema (hardened_operator.crd adds the status schema)."""
    root = {
        "type": "object",
        "description": "A model trained with adversarial training and/or DP-SGD, gated on robustness and "
                       "privacy, signed, verified and served behind validation and rate-limit sidecars.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            # The one restriction a CRD may put on metadata (besides generateName); the apiserver answers
            # "metadata.name: Too long: may not be more than 40 bytes". A CEL rule at the root cannot name this
            # field (its fieldPath must be in the schema) and would report the error at "<nil>".
            "metadata": {"type": "object", "properties": {"name": {
                "type": "string", "maxLength": MAX_NAME_LENGTH,
                "description": "At most 40 characters: child object names (Jobs, Pods) derive from it."}}},
            "spec": build_schema(HardenedModelSpec),
        },
    }
    if status is not None:
        root["properties"]["status"] = status
    return root
