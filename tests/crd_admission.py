"""What the apiserver does to a custom resource on create, from the CRD alone.

Used by the tests to prove the generated CRD and the spec model (``hardened_model.spec``) agree. Follows the
apiserver's order: strict field validation (kubectl's default since 1.27:
unknown fields are errors), pruning of nulls in non-nullable fields,
structural defaulting (recursing into defaulted objects), OpenAPI v3
validation (jsonschema Draft 4 semantics: boolean exclusiveMinimum, 1.0 is not
an integer), then the CEL ``x-kubernetes-validations`` with values typed by the
schema (a ``number`` field is a CEL double even when written as ``2``).
"""
from __future__ import annotations

import copy
from typing import Any

import celpy
import jsonschema

from hardened_model.spec import cel_eval


def _join(path: str, key: Any) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))


class CrdAdmission:
    def __init__(self, crd: dict):
        version = crd["spec"]["versions"][0]
        self.schema = version["schema"]["openAPIV3Schema"]
        self.validator = jsonschema.Draft4Validator(self.schema)

    # ------------------------------------------------------------ the steps
    def unknown_fields(self, value: Any, schema: dict, path: str = "") -> list[tuple[str, str]]:
        errors = []
        if isinstance(value, dict) and schema.get("type") == "object":
            props = schema.get("properties")
            extra = schema.get("additionalProperties")
            for key, sub in value.items():
                if path == "" and key == "metadata":
                    continue  # ObjectMeta is decoded by the apiserver itself; the schema only bounds the name
                if props is not None:
                    if key in props:
                        errors += self.unknown_fields(sub, props[key], _join(path, key))
                    elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                        errors.append((_join(path, key), "unknown field"))
                elif isinstance(extra, dict):
                    errors += self.unknown_fields(sub, extra, _join(path, key))
        elif isinstance(value, list) and "items" in schema:
            for i, item in enumerate(value):
                errors += self.unknown_fields(item, schema["items"], _join(path, i))
        return errors

    def prune_nulls(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self.prune_nulls(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [self.prune_nulls(v) for v in value]
        return value

    def default(self, value: Any, schema: dict) -> Any:
        if isinstance(value, dict) and "properties" in schema:
            for key, sub in schema["properties"].items():
                if key not in value and "default" in sub:
                    value[key] = copy.deepcopy(sub["default"])
                if key in value:
                    value[key] = self.default(value[key], sub)
        elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
            for key in value:
                value[key] = self.default(value[key], schema["additionalProperties"])
        elif isinstance(value, list) and "items" in schema:
            return [self.default(v, schema["items"]) for v in value]
        return value

    def typed(self, value: Any, schema: dict) -> Any:
        """Convert JSON data to what CEL sees, by schema type."""
        if schema.get("type") == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, dict):
            props = schema.get("properties", {})
            extra = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else {}
            return {k: self.typed(v, props.get(k, extra)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.typed(v, schema.get("items", {})) for v in value]
        return value

    def cel(self, value: Any, schema: dict, path: str = "") -> list[tuple[str, str]]:
        errors = []
        for rule in schema.get("x-kubernetes-validations", []):
            data = self.typed(value, schema)
            try:
                ok = bool(cel_eval(rule["rule"], data))
            except celpy.CELEvalError as exc:  # the apiserver reports evaluation errors as invalid
                ok, rule = False, {**rule, "message": f"rule evaluation error: {exc}"}
            if not ok:
                field = (path + rule.get("fieldPath", "")).lstrip(".")
                msg = rule["message"]
                errors.append((field, msg))
        if isinstance(value, dict):
            for key, sub in schema.get("properties", {}).items():
                if key in value:
                    errors += self.cel(value[key], sub, _join(path, key))
        elif isinstance(value, list) and "items" in schema:
            for i, item in enumerate(value):
                errors += self.cel(item, schema["items"], _join(path, i))
        return errors

    def list_map_duplicates(self, value: Any, schema: dict, path: str = "") -> list[tuple[str, str]]:
        """x-kubernetes-list-type map: a repeated key is refused ("Duplicate value"), before any CEL rule."""
        import json

        errors = []
        if isinstance(value, list) and schema.get("x-kubernetes-list-type") == "map":
            keys, seen = schema["x-kubernetes-list-map-keys"], set()
            for i, item in enumerate(value):
                key = json.dumps({k: item.get(k) for k in keys}, separators=(",", ":"))
                if key in seen:
                    errors.append((_join(path, i), f"Duplicate value: {key}"))
                seen.add(key)
        if isinstance(value, dict):
            for key, sub in schema.get("properties", {}).items():
                if key in value:
                    errors += self.list_map_duplicates(value[key], sub, _join(path, key))
        elif isinstance(value, list) and "items" in schema:
            for i, item in enumerate(value):
                errors += self.list_map_duplicates(item, schema["items"], _join(path, i))
        return errors

    @staticmethod
    def cel_on_default(node: dict) -> list[str]:
        """What the apiserver checks when the CRD is written: the node's CEL rules on its default, as written
        (no nested defaults applied; a missing key is an evaluation error, not a pass)."""
        errors = []
        for rule in node.get("x-kubernetes-validations", []):
            try:
                if not bool(cel_eval(rule["rule"], node["default"])):
                    errors.append(rule["message"])
            except celpy.CELEvalError as exc:
                errors.append(f"{exc} evaluating rule: {rule['message']}")
        return errors

    # ----------------------------------------------------------------- all
    def admit(self, obj: dict) -> tuple[dict, list[tuple[str, str]]]:
        """Return (the object as stored, [(field path, message)]); no errors means admitted."""
        errors = self.unknown_fields(obj, self.schema)
        if errors:
            return obj, errors
        stored = self.default(self.prune_nulls(copy.deepcopy(obj)), self.schema)
        errors = self.list_map_duplicates(stored, self.schema)
        for err in self.validator.iter_errors(stored):
            path = ""
            for key in err.absolute_path:
                path = _join(path, key)
            errors.append((path, err.message))
        if errors:
            return stored, errors
        return stored, self.cel(stored, self.schema)
