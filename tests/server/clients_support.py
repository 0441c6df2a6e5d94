"""A signed tabular artifact without training through the trainer (a tabular-mlp fitted for a few steps on a
made-up rule, seconds), and its serving config: the fraud example's features, so real clients can send either
request form to a real chain."""
import copy
import pathlib

import numpy as np

from helpers import example, serving_config, write_fitted_model

FRAUD_BOUNDS = {"amt": (0.0, 25000.0), "city_pop": (0.0, 3_000_000.0)}


def fraud_features() -> list[dict]:
    """The fraud example's features as model.json records them: every number with its bounds."""
    out = []
    for f in copy.deepcopy(example("fraud-tabular")["spec"]["data"]["features"]):
        lo, hi = FRAUD_BOUNDS.get(f["name"], (f.get("min"), f.get("max")))
        if f["type"] != "category":
            f.update(min=float(lo), max=float(hi), boundsFrom="spec")
        out.append(f)
    return out


def fraud_rows(n: int, seed: int = 0) -> np.ndarray:
    """Rows in the model's feature order, categories as vocabulary indices, all within the bounds."""
    rng = np.random.default_rng(seed)
    features = fraud_features()
    cols = []
    for f in features:
        if f["type"] == "category":
            cols.append(rng.integers(0, len(f["vocabulary"]), n).astype(np.float64))
        elif f["type"] == "integer":
            cols.append(rng.integers(int(f["min"]), int(min(f["max"], f["min"] + 1000)) + 1, n).astype(np.float64))
        else:
            cols.append(rng.uniform(f["min"], min(f["max"], f["min"] + 2000), n))
    return np.stack(cols, axis=1)


def make_tabular_artifact(root: pathlib.Path, private_key: pathlib.Path, name: str = "fraud-tabular") -> pathlib.Path:
    import torch

    from hardened_model.networks import build_model
    from hardened_model.signing import sign_model

    features = fraud_features()
    x = fraud_rows(4000)
    y = (x[:, 0] > 1000).astype(np.int64)  # the made-up rule: a large amount is fraud
    numeric = [j for j, f in enumerate(features) if f["type"] != "category"]
    mean, std = x[:, numeric].mean(0).tolist(), (x[:, numeric].std(0) + 1e-6).tolist()
    torch.manual_seed(0)
    model = build_model("tabular-mlp", [len(features)], 2, features=features, mean=mean, std=std, check_dp=False)
    model_dir = write_fitted_model(root, model, x.astype(np.float32), y, steps=150, lr=0.02, model_json={
        "format": "hardened-model/v1", "name": name, "namespace": "default", "version": "fedcba987654",
        "architecture": "tabular-mlp", "inputShape": [len(features)], "numClasses": 2, "labels": ["legit", "fraud"],
        "weights": "model.safetensors", "inputStats": {"mean": x.mean(0).tolist(), "std": x.std(0).tolist()},
        "normalization": {"mean": mean, "std": std, "inside_model": True},
        "tabular": {"features": features, "label": "is_fraud", "positiveClass": "1", "negativeClass": "0",
                    "imputedMedians": {}}}, metrics={"cleanAccuracy": 0.99, "recall": 0.9})
    sign_model(model_dir, root / "model.sig", private_key=private_key)
    return root


def tabular_serving_config(path: pathlib.Path, overrides: dict | None = None) -> pathlib.Path:
    return serving_config(path, overrides, name="fraud-tabular", base="fraud-tabular")
