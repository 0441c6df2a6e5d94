import copy
import pathlib

import pytest

from hardened_operator.spec import load_yaml_documents

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def example(name: str) -> dict:
    """An example manifest as plain data (each test gets its own copy)."""
    return load_yaml_documents((ROOT / "examples" / f"{name}.yaml").read_text())[0]


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch: null deletes, objects merge, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


@pytest.fixture
def root() -> pathlib.Path:
    return ROOT
