"""The CEL rules of the spec and the engine that checks them as the apiserver does.

Rules that span fields are written once, as ``CelRule``: the CRD carries them as ``x-kubernetes-validations``
for the apiserver, and ``parse_spec`` evaluates the very same expressions with cel-python over the defaulted
wire data, so ``kubectl apply`` and ``hardened-model up`` reject the same spec with the same message.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Mapping

from pydantic import BaseModel

from .errors import go_value


@dataclass(frozen=True)
class CelRule:
    """One ``x-kubernetes-validations`` entry, checked by the apiserver and by ``parse_spec``.

    ``field`` is the offending field relative to the rule's object (used as the
    rule's ``fieldPath`` and to name the value in the error). There is no
    messageExpression: a real apiserver estimates ``'a (' + string(self.a) + ')'``
    at over 100x the CEL cost budget and refuses the whole CRD (issue 14), so
    the message is static and the error names the value instead.
    """

    rule: str
    message: str
    field: str

    def to_crd(self) -> dict:
        return {"rule": self.rule, "message": self.message, "fieldPath": "." + self.field,
                "reason": "FieldValueInvalid"}


def submodels(annotation) -> list[type[BaseModel]]:
    """The pydantic models inside a field annotation (X, X | None, list[X], ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in submodels(arg)]


@functools.cache
def _cel_program(expr: str):
    import celpy  # cel-python: a pure-Python CEL implementation

    env = celpy.Environment()
    return env.program(env.compile(expr))


def cel_eval(expr: str, obj: Any) -> Any:
    """Evaluate a CEL expression with ``self`` bound to ``obj`` (plain JSON data)."""
    import celpy

    return _cel_program(expr).evaluate({"self": celpy.json_to_cel(obj)})


def _lookup(obj: Mapping, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(obj, Mapping) or part not in obj:
            return None
        obj = obj[part]
    return obj


def check_cel(cls: type[BaseModel], data: Mapping, path: str) -> list[tuple[str, str]]:
    """Apply ``cls.cel_rules`` to defaulted wire data (camelCase, None fields dropped)."""
    problems = []
    for rule in cls.cel_rules:
        if not bool(cel_eval(rule.rule, data)):
            msg = rule.message
            value = _lookup(data, rule.field)
            problems.append((f"{path}.{rule.field}", f"Invalid value: {go_value(value)}: {msg}"))
    return problems


def walk_cel(cls: type[BaseModel], data: Any, path: str) -> list[tuple[str, str]]:
    if not isinstance(data, Mapping):
        return []
    problems = check_cel(cls, data, path)
    for name, field in cls.model_fields.items():
        key = field.alias or name
        if key not in data:
            continue
        for sub in submodels(field.annotation):
            value = data[key]
            if isinstance(value, list):
                for i, item in enumerate(value):
                    problems += walk_cel(sub, item, f"{path}.{key}[{i}]")
            else:
                problems += walk_cel(sub, value, f"{path}.{key}")
    return problems
