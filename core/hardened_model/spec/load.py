"""Reading HardenedModel manifests: YAML as kubectl reads it, then parse, default and validate as the
apiserver does (null pruning, OpenAPI validation, list-map keys, CEL), so that `hardened-model validate`,
`hardened-model up` and the operator refuse what `kubectl apply` refuses, with the same line.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Mapping

from pydantic import ValidationError

from .cel import walk_cel
from .errors import SpecError, problems_of
from .schema import openapi_schema
from .sections import HardenedModel, HardenedModelSpec, _Envelope, to_wire


@functools.cache
def _crd_schema() -> dict:
    return openapi_schema()  # the CRD's own schema: the bounds and enums the apiserver checks


def _problems(err: ValidationError, prefix: str) -> list[tuple[str, str]]:
    return problems_of(err, prefix, _crd_schema())


def prune_nulls(data: Any) -> Any:
    """Drop null values, as the apiserver prunes nulls of non-nullable fields before defaulting."""
    if isinstance(data, Mapping):
        return {k: prune_nulls(v) for k, v in data.items() if v is not None}
    if isinstance(data, list):
        return [prune_nulls(v) for v in data]
    return data


def parse_spec(data: Any, *, path: str = "spec") -> HardenedModelSpec:
    """Parse and default a spec mapping; raise SpecError naming every bad field and its value."""
    if not isinstance(data, Mapping):
        raise SpecError([(path, f"Invalid value: {type(data).__name__}: must be an object")])
    try:
        spec = HardenedModelSpec.model_validate(prune_nulls(data))
    except ValidationError as err:
        raise SpecError(_problems(err, path)) from None
    wire = to_wire(spec)
    problems = _duplicate_keys(wire, path) or walk_cel(HardenedModelSpec, wire, path)
    if problems:
        raise SpecError(problems)
    return spec


LIST_MAPS = (("data", "features"), ("serving", "rateLimit", "plans"))  # x-kubernetes-list-type map, key name


def _duplicate_keys(wire: dict, path: str) -> list[tuple[str, str]]:
    """Lists the CRD declares x-kubernetes-list-type map (keyed by name): the apiserver refuses a repeated key
    with this line before it evaluates any CEL rule."""
    problems = []
    for where in LIST_MAPS:
        items, seen = wire, set()
        for part in where:
            items = items.get(part) or {} if isinstance(items, dict) else {}
        for i, item in enumerate(items or []):
            if item["name"] in seen:
                problems.append((f"{path}.{'.'.join(where)}[{i}]", f'Duplicate value: {{"name":"{item["name"]}"}}'))
            seen.add(item["name"])
    return problems


def parse_manifest(data: Any) -> HardenedModel:
    """Parse a whole HardenedModel manifest (apiVersion, kind, metadata, spec)."""
    if not isinstance(data, Mapping):
        raise SpecError([("manifest", f"Invalid value: {type(data).__name__}: must be an object")])
    problems: list[tuple[str, str]] = []
    try:
        _Envelope.model_validate({k: v for k, v in data.items() if k != "spec"})
    except ValidationError as err:
        problems += [(p.lstrip("."), m) for p, m in _problems(err, "")]
    spec = None
    try:
        spec = parse_spec(data.get("spec"), path="spec")
    except SpecError as err:
        problems += err.problems
    if problems:
        raise SpecError(problems)
    return HardenedModel.model_validate({**data, "spec": spec})


def yaml_loader():
    """A safe YAML loader that reads floats as YAML 1.2 (and kubectl) do.

    PyYAML follows YAML 1.1, where ``1e-5`` (no dot) is a *string*; kubectl reads it
    as a number, so ``targetDelta: 1e-5`` must parse here too.
    """
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    # kubectl's YAML reader (go-yaml) also reads y, Y, n and N as booleans: `label: y` is `true` to the
    # apiserver, so it must be here too, or validate would pass what kubectl apply refuses
    Loader.bool_values = {**yaml.SafeLoader.bool_values, "y": True, "n": False}
    Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN"))
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
                   r"|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
                   r"|\.[0-9_]+(?:[eE][-+][0-9]+)?"
                   r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
        list("-+0123456789."))
    return Loader


def load_yaml_documents(text: str) -> list[Any]:
    import yaml

    return [d for d in yaml.load_all(text, Loader=yaml_loader()) if d is not None]  # noqa: S506 - SafeLoader subclass


def read_yaml_file(path: str, *, field: str | None = None) -> list[Any]:
    """The documents of a YAML file; a file that is not UTF-8 or not YAML is a SpecError at ``field`` (default:
    the path) saying where (OSError passes: the caller says it cannot read the file)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            return load_yaml_documents(fh.read())
    except UnicodeDecodeError as exc:
        raise SpecError([(field or path, f"Invalid value: not UTF-8 text (byte {exc.start})")]) from exc
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise SpecError([(field or path, f"Invalid value: not YAML{at}: {getattr(exc, 'problem', None) or exc}")]) \
            from exc


def load_manifest(path: str) -> HardenedModel:
    """Read one HardenedModel from a YAML file."""
    docs = read_yaml_file(path, field="manifest")
    if len(docs) != 1:
        raise SpecError([("manifest", f"Invalid value: {path}: expected one YAML document, found {len(docs)}")])
    return parse_manifest(docs[0])

