"""Errors in the apiserver's words (k8s.io/kube-openapi validation + field.Error).

`hardened-model validate` and `kubectl apply` must print the same line for the same bad spec
(tests/e2e/test_apiserver.py checks it on a real apiserver), so every message is phrased here, in one place.
This module imports nothing else of the package: the CEL engine phrases its failures with ``go_value`` and
the parser passes in the CRD schema whose bounds a message quotes, so the imports run one way.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

from pydantic import ValidationError


class SpecError(ValueError):
    """An invalid HardenedModel: every problem, each naming its field path and value."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems  # [(field path, message)]
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in problems))

    @property
    def fields(self) -> list[str]:
        return [path for path, _ in self.problems]


def _loc(loc: tuple, prefix: str) -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def go_value(value: Any) -> str:
    """A value as the apiserver prints it in field errors (Go: strings quoted, 1.0 as 1, 1e-05)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e21 else repr(value)
    if isinstance(value, (str, list, dict)):
        return json.dumps(value)
    return str(value)


def _json_type(value: Any) -> str:
    """The OpenAPI type name of a JSON value, as the apiserver names it in a type error."""
    if isinstance(value, bool):
        return "boolean"
    return {int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), "object" if isinstance(value, Mapping) else "null" if value is None else "array")


def _schema_at(schema: dict, loc: tuple) -> dict:
    node = schema
    for part in loc:
        if isinstance(part, int):
            node = node.get("items", {})
        else:
            node = node.get("properties", {}).get(part) or (node.get("additionalProperties") or {})
    return node


def _apiserver_message(e: dict, loc: tuple, path: str, schema: dict) -> str:
    """One pydantic error in the apiserver's words. ``loc`` is the path from the manifest's root, ``schema``
    the resource's openAPIV3Schema: the bounds and enums the apiserver checks and quotes."""
    node, value, kind = _schema_at(schema, loc), e["input"], e["type"]
    body = f"{path} in body"
    if kind == "missing":
        return "Required value"
    if kind == "literal_error" and "enum" in node:
        return (f"Unsupported value: {go_value(value)}: supported values: "
                + ", ".join(go_value(v) for v in node["enum"]))
    bounds = {"greater_than_equal": ("minimum", "greater than or equal to"),
              "greater_than": ("minimum", "greater than"),
              "less_than_equal": ("maximum", "less than or equal to"), "less_than": ("maximum", "less than")}
    if kind in bounds and bounds[kind][0] in node:
        return f"Invalid value: {go_value(value)}: {body} should be {bounds[kind][1]} {go_value(node[bounds[kind][0]])}"
    if kind == "too_short" and "minItems" in node:
        return f"Invalid value: {len(value)}: {body} should have at least {node['minItems']} items"
    if kind == "too_long" and "maxItems" in node:
        return f"Too many: {len(value)}: must have at most {node['maxItems']} items"
    if kind == "string_too_short" and "minLength" in node:
        return f"Invalid value: {go_value(value)}: {body} should be at least {node['minLength']} chars long"
    if kind == "string_too_long" and "maxLength" in node:
        return f"Too long: may not be more than {node['maxLength']} bytes"
    if (kind == "string_pattern_mismatch" or kind == "value_error" and isinstance(value, str)) and "pattern" in node:
        return f"Invalid value: {go_value(value)}: {body} should match '{node['pattern']}'"
    want = node.get("type") or ("integer or string" if node.get("x-kubernetes-int-or-string") else None)
    if kind.endswith("_type") or kind in ("int_from_float", "model_attributes_type"):
        if want and want != _json_type(value):
            return f'Invalid value: "{_json_type(value)}": {body} must be of type {want}: "{_json_type(value)}"'
    return f"Invalid value: {go_value(value)}: {e['msg']}"


def problems_of(err: ValidationError, prefix: str, schema: dict) -> list[tuple[str, str]]:
    """Every error of one pydantic validation as (field path, apiserver message)."""
    problems = []
    for e in err.errors(include_url=False):
        # leave out pydantic's own steps: validator functions, literal and union branches (int | str)
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and (
            p.startswith(("function-", "literal[")) or p in ("int", "str", "float", "bool"))))
        path = _loc(loc, prefix)
        if e["type"] == "extra_forbidden":
            problems.append((path, f'unknown field "{path}"'))
        else:  # prefix "spec" or "" (the envelope)
            problems.append((path, _apiserver_message(e, (prefix,) * bool(prefix) + loc, path, schema)))
    return problems
