"""(a) DP-SGD slowdown vs non-private training of the same model, in one run.

Trains cnn-28x28 on MNIST (8,000 examples, batch 256) for 4 epochs each way
through hardened_trainer.train.train, and once more with Opacus' default
per-sample hooks for reference. Reports the steady-state epoch time (fastest
of epochs 2-4, from the trainer's own epoch log) and the whole call, which adds
DP's fixed costs (noise-multiplier search, accountant).

    .venv/bin/python benchmarks/dp_overhead.py
"""
import time
import warnings

import torch

from common import machine, mnist_spec, mnist_split

warnings.filterwarnings("ignore")


def timed(spec, split):
    """(steady-state seconds per epoch, seconds for the whole train() call)."""
    from hardened_trainer.train import train

    marks = []
    t = time.perf_counter()
    train(spec, split.x_train, split.y_train, device=torch.device("cpu"),
          log=lambda event, **kw: marks.append(kw["seconds"]))
    total = time.perf_counter() - t
    return min(b - a for a, b in zip(marks, marks[1:])), total


def main():
    import hardened_trainer.train as train_mod

    split = mnist_split()
    common = {"training": {"epochs": 4, "batchSize": 256, "adversarial": {"enabled": False}}}
    plain = mnist_spec({**common, "training": {**common["training"], "privacy": {"enabled": False}},
                        "gates": {"maxEpsilon": None}})
    private = mnist_spec(common)
    base = timed(plain, split)
    ghost = timed(private, split)
    train_mod.GRAD_SAMPLE_MODE = "hooks"
    hooks = timed(private, split)
    print(f"machine: {machine()}")
    print(f"{'':22s} {'epoch':>8s} {'ratio':>6s} {'4 epochs':>9s} {'ratio':>6s}")
    for name, (epoch, total) in [("non-private", base), ("DP-SGD ghost (ours)", ghost),
                                 ("DP-SGD Opacus hooks", hooks)]:
        print(f"{name:22s} {epoch:7.2f}s {epoch / base[0]:5.2f}x {total:8.2f}s {total / base[1]:5.2f}x")


if __name__ == "__main__":
    main()
