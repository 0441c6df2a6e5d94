"""Shared set-up for the benchmarks: MNIST t10k split 8,000 train / 2,000 test, seed 0."""
from __future__ import annotations

import os
import pathlib
import platform
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
MNIST = pathlib.Path(os.environ.get("MNIST_DIR", ROOT.parent / "shared/data/mnist-t10k"))
sys.path.insert(0, str(ROOT / "tests"))


def mnist_split():
    from hardened_trainer.data import load_dataset, split

    ds = load_dataset(f"file://{MNIST}")
    # 8,000 / 2,000 as the reference capstone does
    return split(ds, test_fraction=0.2, seed=0)


def mnist_spec(overrides: dict):
    """The MNIST example spec with overrides (JSON merge patch)."""
    from helpers import example, merge_patch

    from hardened_model.spec import parse_spec

    return parse_spec(merge_patch(example("mnist-adv-dp")["spec"], overrides))


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, device {'cuda' if torch.cuda.is_available() else 'cpu'}")
