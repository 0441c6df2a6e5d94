"""The trainer's CUDA path, ready to measure (issue 19): dp_overhead.py's table on whatever device is here.

Device selection as the trainer does it (hardened_trainer.train.select_device("auto"): CUDA when torch sees
a GPU), batches copied from pinned memory, the fast clipper and Opacus' optimizer on the device, then one
evaluation through ART (PyTorchClassifier's device_type follows torch.cuda.is_available()) and the
membership-inference attack on the trained model; with several GPUs, distributed_scaling.py's table at world
size 1 and the GPU count (nccl). Without a GPU it says so and runs the same on the CPU.

    .venv/bin/python benchmarks/gpu_check.py [--only cnn-28x28] [--smoke]
"""
import time
import warnings

import torch

from common import DP, EVALUATION, PGD, machine, mnist_spec, mnist_split, smoke_parser
from dp_overhead import table

warnings.filterwarnings("ignore")


def describe(device: torch.device) -> str:
    if device.type != "cuda":
        return "no GPU: torch.cuda.is_available() is False, running on the CPU"
    props = torch.cuda.get_device_properties(device)
    return (f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}, "
            f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")


def evaluation_on(device: torch.device, smoke: bool = False) -> None:
    """Train cnn-28x28 with PGD-5 (half of each batch) and DP-SGD at epsilon 3 for 2 epochs on ``device``, then
    evaluate it as the trainer does (FGSM and PGD-10 on 500 test images, MIA)."""
    from hardened_trainer.evaluate import evaluate
    from hardened_trainer.train import train

    split = mnist_split(smoke=smoke)
    spec = mnist_spec({"epochs": 2, "batchSize": 256, "learningRate": 0.1, "adversarial": {**PGD, "maxIter": 5},
                       "privacy": DP}, evaluation={**EVALUATION, "maxSamples": 64 if smoke else 500})
    t = time.perf_counter()
    res = train(spec, split.x_train, split.y_train, device=device, log=lambda *a, **k: None)
    trained = time.perf_counter() - t
    t = time.perf_counter()
    ev = evaluate(res.model, spec, split.x_train, split.y_train, split.x_test, split.y_test, epsilon=res.epsilon,
                  labels=[str(i) for i in range(10)])
    print(f"\nadversarial + DP-SGD cnn-28x28, 2 epochs on {device}: {trained:.1f} s (clipping {res.clipping}); "
          f"evaluation (ART PGD-10 and FGSM on {spec.evaluation.max_samples}, MIA) {time.perf_counter() - t:.1f} s: "
          f"clean {ev.clean_accuracy:.4f}, PGD {ev.attack_accuracy['pgd']:.4f}, MIA AUC {ev.membership_auc:.3f}, "
          f"epsilon {ev.epsilon:.2f}")


def main():
    from hardened_trainer.train import select_device

    p = smoke_parser(__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=["cnn-28x28", "cnn-8x8", "tabular-mlp"], help="one model (default: all)")
    args = p.parse_args()
    device = select_device("auto")
    print(f"machine: {machine()}")
    print(describe(device), flush=True)
    table(args.only, device, smoke=args.smoke)
    evaluation_on(device, smoke=args.smoke)
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if gpus > 1:  # distributed_scaling.py's table, one rank per GPU (nccl)
        from distributed_scaling import table as scaling

        print(f"\ndata-parallel training, world 1 and {gpus} (one rank per GPU):")
        scaling((1, gpus), smoke=args.smoke, device="cuda")
    else:
        print(f"\ndata-parallel training: {gpus} GPU(s), no multi-GPU table (benchmarks/distributed_scaling.py "
              "measures the CPU one)")


if __name__ == "__main__":
    main()
