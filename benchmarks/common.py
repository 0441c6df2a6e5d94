"""Shared set-up for the benchmarks: the data (MNIST t10k split 8,000 train / 2,000 test, seed 0; digits; the
synthetic transactions), the specs they train, and ``--smoke``.

The specs are built here from explicit settings, never from examples/: an example's settings follow what it
demonstrates, and when examples/mnist-adv-dp.yaml moved to 8 augmented copies every benchmark derived from it
stopped at start-up (issue 26). Every setting that changes a figure is spelled out (not left to a spec
default), so a figure in docs/benchmarks.md stays reproducible from its command line.

``--smoke`` (every benchmark has it): tiny sizes that run in seconds through the same code and print the same
table; its figures mean nothing and are never written anywhere (tests/benchmarks/ runs each one).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
import tempfile

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
MNIST = pathlib.Path(os.environ.get("MNIST_DIR", ROOT.parent / "shared/data/mnist-t10k"))
sys.path.insert(0, str(ROOT / "tests"))

SMOKE_HELP = "tiny sizes, seconds: the same code path and table, figures meaningless (default: off)"

MNIST_MODEL = {"architecture": "cnn-28x28", "inputShape": [1, 28, 28], "numClasses": 10,
               "labels": [str(i) for i in range(10)]}
DIGITS_MODEL = {"architecture": "cnn-8x8", "inputShape": [1, 8, 8], "numClasses": 10}
# What every image benchmark trains unless it says otherwise: SGD with momentum 0.9, seed 0, and none of the
# options (no adversarial examples, no DP-SGD, no augmentation, no weight average, no weight standardization).
TRAINING = {"epochs": 10, "batchSize": 128, "learningRate": 0.05, "optimizer": "sgd", "seed": 0,
            "adversarial": {"enabled": False}, "privacy": {"enabled": False}}
PGD = {"enabled": True, "attack": "pgd", "eps": 0.1, "epsStep": 0.025, "maxIter": 10, "ratio": 0.5}
DP = {"enabled": True, "targetEpsilon": 3.0, "targetDelta": 1e-5, "maxGradNorm": 1.0, "accountant": "prv"}
EVALUATION = {"attacks": ["fgsm", "pgd"], "eps": 0.1, "pgdIter": 10, "membershipInference": True,
              "maxSamples": 2000}

# The fraud MLP (issue 15) as docs/benchmarks.md measured it: the synthetic transactions' schema and
# examples/fraud-tabular.yaml's settings of 2026-11-29 (batch 2048, Adam 0.01, balanced class weights, DP-SGD at
# epsilon 3 with clip 0.5, PGD at 0.3 standard deviations on amount and hour).
FRAUD_MODEL = {"architecture": "tabular-mlp", "inputShape": [9], "numClasses": 2, "labels": ["legit", "fraud"]}
FRAUD_FEATURES = [
    {"name": "amt", "type": "number", "min": 0, "mutable": True},
    {"name": "category", "type": "category", "mutable": False,
     "vocabulary": ["entertainment", "food_dining", "gas_transport", "grocery_net", "grocery_pos", "health_fitness",
                    "home", "kids_pets", "misc_net", "misc_pos", "personal_care", "shopping_net", "shopping_pos",
                    "travel"]},
    {"name": "hour", "type": "integer", "min": 0, "max": 23, "mutable": True},
    {"name": "age", "type": "integer", "min": 18, "max": 110, "mutable": False},
    {"name": "city_pop", "type": "integer", "min": 0, "mutable": False},
    {"name": "lat", "type": "number", "min": -90, "max": 90, "mutable": False},
    {"name": "long", "type": "number", "min": -180, "max": 180, "mutable": False},
    {"name": "merch_lat", "type": "number", "min": -90, "max": 90, "mutable": False},
    {"name": "merch_long", "type": "number", "min": -180, "max": 180, "mutable": False},
]
FRAUD_TRAINING = {"epochs": 10, "batchSize": 2048, "learningRate": 0.01, "optimizer": "adam", "seed": 0,
                  "classWeights": "balanced",
                  "adversarial": {"enabled": True, "attack": "pgd", "eps": 0.3, "maxIter": 5, "ratio": 0.5},
                  "privacy": {"enabled": True, "targetEpsilon": 3.0, "targetDelta": 1e-5, "maxGradNorm": 0.5,
                              "accountant": "prv"}}
FRAUD_EVALUATION = {"attacks": ["pgd"], "eps": 0.3, "pgdIter": 10, "membershipInference": True, "maxSamples": 4000}
TRANSACTIONS = "/tmp/hardened-model-data/transactions-synthetic.csv"  # scripts/make-transactions' default output


def smoke_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the --smoke flag every benchmark shares."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    return p


def build_spec(model: dict, data: dict, training: dict, *, base: dict = TRAINING, evaluation: dict | None = None):
    """A spec from explicit sections: ``training`` is merged (JSON merge patch) into ``base``; no gates apply."""
    from helpers import merge_patch

    from hardened_model.spec import parse_spec

    return parse_spec({"model": model, "data": {"sanitization": {"enabled": False}, **data},
                       "training": merge_patch(base, training), "evaluation": evaluation or EVALUATION,
                       "gates": {"minCleanAccuracy": 0.0}})


def mnist_spec(training: dict, *, evaluation: dict | None = None):
    """cnn-28x28 on MNIST: TRAINING with ``training`` merged in."""
    return build_spec(MNIST_MODEL, {"source": f"file://{MNIST}"}, training, evaluation=evaluation)


def digits_spec(training: dict, *, evaluation: dict | None = None):
    """cnn-8x8 on scikit-learn's digits: TRAINING with ``training`` merged in."""
    return build_spec(DIGITS_MODEL, {"source": "builtin:digits"}, training, evaluation=evaluation)


def fraud_spec(training: dict, source: str):
    """tabular-mlp on the transactions in ``source``: FRAUD_TRAINING with ``training`` merged in."""
    data = {"format": "tabular", "source": f"file://{source}", "label": "is_fraud", "positiveClass": "1",
            "validationSplit": 0.25, "features": FRAUD_FEATURES}
    return build_spec(FRAUD_MODEL, data, training, base=FRAUD_TRAINING, evaluation=FRAUD_EVALUATION)


def small(split, n_train: int, n_test: int):
    """The first examples of a split (the split is stratified and shuffled): for --smoke."""
    from hardened_trainer.data import Split

    return Split(x_train=split.x_train[:n_train], y_train=split.y_train[:n_train], x_test=split.x_test[:n_test],
                 y_test=split.y_test[:n_test])


def mnist_split(*, smoke: bool = False):
    """8,000 / 2,000 as the reference capstone does; with ``smoke``, 256 / 128 of them, or random 28x28 images
    when the MNIST files are not beside the checkout (a smoke run checks the code, not the figures)."""
    from hardened_trainer.data import Dataset, load_dataset, split

    if smoke and not MNIST.exists():
        import numpy as np

        rng = np.random.default_rng(0)
        print(f"smoke: no MNIST at {MNIST.name}, random 28x28 images instead", flush=True)
        ds = Dataset(x=rng.random((400, 1, 28, 28), dtype=np.float32), y=np.arange(400) % 10, raw_scale=1.0,
                     source="random")
    else:
        ds = load_dataset(f"file://{MNIST}")
    s = split(ds, test_fraction=0.2, seed=0)
    return small(s, 256, 128) if smoke else s


def make_transactions(rows: int, seed: int = 0, fraud_rate: float = 0.004) -> pathlib.Path:
    """scripts/make-transactions' generator, imported from its file, writing ``rows`` rows to a fresh
    temporary CSV file (what --smoke and dp_overhead.py train on; a smoke run takes more frauds, so that a
    small test split still has some)."""
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader("make_transactions", str(ROOT / "scripts/make-transactions"))
    mod = importlib.util.module_from_spec(importlib.util.spec_from_loader("make_transactions", loader))
    loader.exec_module(mod)
    csv = pathlib.Path(tempfile.mkdtemp()) / "transactions.csv"
    mod.write(mod.make(rows, seed, fraud_rate), csv)
    return csv


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, device {'cuda' if torch.cuda.is_available() else 'cpu'}")
