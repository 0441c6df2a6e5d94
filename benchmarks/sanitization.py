"""Label-flip poisoning: detection precision/recall and the accuracy sanitization recovers.

10% of the training labels are flipped to another class (seed 1). Filters:
our k-NN label consistency and cross-validated-loss filters, and the pixel
IsolationForest of the reference capstone. Accuracy: the same model trained
(hardened_trainer.train, no DP/adversarial, fixed seed) on clean, poisoned and
sanitized-poisoned training data, measured on the untouched test split.
Datasets: scikit-learn digits (1,347/450) and MNIST t10k (8,000/2,000).

    .venv/bin/python benchmarks/sanitization.py [--smoke]
"""
import warnings

import torch
from sklearn.ensemble import IsolationForest

from common import digits_spec, mnist_spec, mnist_split, small, smoke_parser

warnings.filterwarnings("ignore")


def accuracy(spec, x, y, split):
    from hardened_trainer.evaluate import predict
    from hardened_trainer.train import train

    res = train(spec, x, y, device=torch.device("cpu"), log=lambda *a, **k: None)
    return float((predict(res.model, split.x_test).argmax(1) == split.y_test).mean())


def row(name, split, spec):
    from hardened_trainer.sanitize import flip_labels, sanitize

    y_bad, flipped = flip_labels(split.y_train, 0.10, 10, seed=1)
    x = split.x_train
    out = {"clean": accuracy(spec, x, split.y_train, split), "poisoned": accuracy(spec, x, y_bad, split)}
    masks = {m: ~sanitize(x, y_bad, method=m, max_remove_fraction=0.2).keep
             for m in ("knn-label-consistency", "loss")}
    flat = x.reshape(len(x), -1)
    masks["isolation-forest (pixels)"] = IsolationForest(contamination=0.1, random_state=0).fit(flat).predict(flat) == -1
    print(f"{name}: clean {out['clean']:.4f}, poisoned {out['poisoned']:.4f}")
    for method, removed in masks.items():
        tp = (removed & flipped).sum()
        acc = accuracy(spec, x[~removed], y_bad[~removed], split)
        print(f"  {method:28s} removed {removed.sum():5d}  precision {tp / max(removed.sum(), 1):.3f}  "
              f"recall {tp / flipped.sum():.3f}  accuracy {acc:.4f}")


def main():
    from hardened_trainer.data import load_dataset, split as split_fn

    args = smoke_parser(__doc__.split("\n\n")[0]).parse_args()
    # no DP-SGD, no adversarial examples, 10 epochs, batch 128, SGD 0.05, seed 0 (common.TRAINING); smoke: 1 epoch
    plain = {"epochs": 1} if args.smoke else {}
    digits = split_fn(load_dataset("builtin:digits"), test_fraction=0.25, seed=0)
    row("digits", small(digits, 300, 100) if args.smoke else digits, digits_spec(plain))
    row("mnist", mnist_split(smoke=args.smoke), mnist_spec(plain))


if __name__ == "__main__":
    main()
