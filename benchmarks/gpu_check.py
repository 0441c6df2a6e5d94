"""The trainer's CUDA path, ready to measure (issue 19): dp_overhead.py's table on whatever device is here.

Device selection as the trainer does it (hardened_trainer.train.select_device("auto"): CUDA when torch sees
a GPU), batches copied from pinned memory, the fast clipper and Opacus' optimizer on the device, then one
evaluation through ART (PyTorchClassifier's device_type follows torch.cuda.is_available()) and the
membership-inference attack on the trained model. Without a GPU it says so and runs the same on the CPU.

    .venv/bin/python benchmarks/gpu_check.py [--only cnn-28x28]
"""
import argparse
import time
import warnings

import torch

from common import machine, mnist_spec, mnist_split
from dp_overhead import table

warnings.filterwarnings("ignore")


def describe(device: torch.device) -> str:
    if device.type != "cuda":
        return "no GPU: torch.cuda.is_available() is False, running on the CPU"
    props = torch.cuda.get_device_properties(device)
    return (f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}, "
            f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")


def evaluation_on(device: torch.device) -> None:
    """Train cnn-28x28 with DP-SGD for 2 epochs on ``device``, then evaluate it as the trainer does."""
    from hardened_trainer.evaluate import evaluate
    from hardened_trainer.train import train

    split = mnist_split()
    spec = mnist_spec({"training": {"epochs": 2, "adversarial": {"enabled": True, "maxIter": 5}},
                       "evaluation": {"maxSamples": 500}, "gates": None})
    t = time.perf_counter()
    res = train(spec, split.x_train, split.y_train, device=device, log=lambda *a, **k: None)
    trained = time.perf_counter() - t
    t = time.perf_counter()
    ev = evaluate(res.model, spec, split.x_train, split.y_train, split.x_test, split.y_test, epsilon=res.epsilon,
                  labels=[str(i) for i in range(10)])
    print(f"\nadversarial + DP-SGD cnn-28x28, 2 epochs on {device}: {trained:.1f} s (clipping {res.clipping}); "
          f"evaluation (ART PGD-10 and FGSM on 500, MIA) {time.perf_counter() - t:.1f} s: clean "
          f"{ev.clean_accuracy:.4f}, PGD {ev.attack_accuracy['pgd']:.4f}, MIA AUC {ev.membership_auc:.3f}, "
          f"epsilon {ev.epsilon:.2f}")


def main():
    from hardened_trainer.train import select_device

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=["cnn-28x28", "cnn-8x8", "tabular-mlp"], help="one model (default: all)")
    args = p.parse_args()
    device = select_device("auto")
    print(f"machine: {machine()}")
    print(describe(device), flush=True)
    table(args.only, device)
    evaluation_on(device)


if __name__ == "__main__":
    main()
