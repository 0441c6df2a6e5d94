"""Helpers shared by the tests (fixtures live in conftest.py)."""
import copy
import json
import pathlib

from hardened_operator.spec import load_yaml_documents

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def example(name: str) -> dict:
    """An example manifest as plain data (each call returns a fresh copy)."""
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


# A spec that trains in seconds: 300 digits, 2 epochs, PGD + DP-SGD, tiny evaluation.
TINY = {
    "data": {"maxSamples": 300, "validationSplit": 0.25},
    "training": {"epochs": 2, "batchSize": 64, "learningRate": 0.1,
                 "adversarial": {"enabled": True, "attack": "pgd", "eps": 0.1, "maxIter": 3},
                 "privacy": {"enabled": True, "targetEpsilon": 8.0, "targetDelta": 1e-5}},
    "evaluation": {"maxSamples": 40, "pgdIter": 3},
    "gates": {"minCleanAccuracy": 0.0, "minRobustAccuracy": 0.0, "maxEpsilon": 8.0, "maxMembershipAUC": 1.0},
}


def tiny_manifest(overrides: dict | None = None) -> dict:
    doc = example("digits-demo")
    doc["spec"] = merge_patch(merge_patch(doc["spec"], TINY), overrides or {})
    return doc


def write_config(tmp: pathlib.Path, doc: dict, private_key: pathlib.Path, **kwargs) -> pathlib.Path:
    from hardened_operator.manifests.trainer_config import build_trainer_config
    from hardened_operator.spec import parse_manifest

    cfg = build_trainer_config(parse_manifest(doc), output_dir=str(tmp / "out"), private_key_path=str(private_key),
                               **kwargs)
    path = tmp / "train.json"
    path.write_text(json.dumps(cfg))
    return path
