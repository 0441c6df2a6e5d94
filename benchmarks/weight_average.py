"""Should the weight average (training.emaDecay) be on by default under DP-SGD? Side by side in one run, the
DP models other than the MNIST rows (which efficacy.py measures), each trained with emaDecay 0.999 and without,
the rest of the settings the examples':

- the digits demo (examples/digits-demo.yaml: cnn-8x8, adversarial + DP-SGD at epsilon 8, 20 epochs), seeds
  0-2, on its 75% / 25% split of scikit-learn's digits: clean, FGSM and PGD-10 accuracy, MIA AUC;
- the fraud MLP (examples/fraud-tabular.yaml: DP-SGD at epsilon 3, with and without adversarial training),
  seeds 0-1, on benchmarks/tabular.py's split of the synthetic transactions: PR-AUC, recall at 0.5, robust
  recall, recall at precision >= 0.2.

    .venv/bin/python scripts/make-transactions --rows 100000
    .venv/bin/python benchmarks/weight_average.py [--data FILE]

Prints one JSON line per run, then the means per setting.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
import warnings
from statistics import mean

import torch

from common import machine

warnings.filterwarnings("ignore")
DECAYS = (None, 0.999)


def digits_runs():
    from helpers import example, merge_patch

    from hardened_model.spec import parse_spec
    from hardened_trainer.data import load_dataset, split
    from hardened_trainer.evaluate import evaluate
    from hardened_trainer.train import train

    parts = split(load_dataset("builtin:digits"), test_fraction=0.25, seed=0)
    for decay in DECAYS:
        for seed in (0, 1, 2):
            spec = parse_spec(merge_patch(example("digits-demo")["spec"], {
                "training": {"seed": seed, "emaDecay": decay}, "data": {"sanitization": {"enabled": False}}}))
            t0 = time.perf_counter()
            res = train(spec, parts.x_train, parts.y_train, device=torch.device("cpu"), log=lambda *a, **k: None)
            ev = evaluate(res.model, spec, parts.x_train, parts.y_train, parts.x_test, parts.y_test,
                          epsilon=res.epsilon, labels=[str(i) for i in range(10)])
            yield {"model": "digits-demo", "emaDecay": decay, "seed": seed, "clean": ev.clean_accuracy,
                   "fgsm": ev.attack_accuracy["fgsm"], "pgd10": ev.attack_accuracy["pgd"],
                   "miaAUC": ev.membership_auc, "epsilon": ev.epsilon, "seconds": round(time.perf_counter() - t0, 1)}


def tabular_runs(data: str):
    from tabular import recall_at_precision, spec_with, transactions_split

    from hardened_trainer.evaluate import positive_class_metrics, predict
    from hardened_trainer.train import train

    _, parts, cons = transactions_split(data)
    for name, adversarial in (("fraud MLP, DP-SGD", False), ("fraud MLP, adversarial + DP-SGD", True)):
        for decay in DECAYS:
            for seed in (0, 1):
                spec = spec_with({"training": {"adversarial": {"enabled": adversarial}, "emaDecay": decay,
                                               "seed": seed}}, data)
                t0 = time.perf_counter()
                res = train(spec, parts.x_train, parts.y_train, device=torch.device("cpu"), log=lambda *a, **k: None)
                figures = positive_class_metrics(res.model, parts.x_test, parts.y_test, spec, cons)
                score = predict(res.model, parts.x_test)[:, 1]
                yield {"model": name, "emaDecay": decay, "seed": seed, "prAUC": figures["prAUC"],
                       "recall": figures["recall"], "robustRecall": figures["robustRecall"],
                       "recallAtP20": recall_at_precision(parts.y_test, score), "epsilon": res.epsilon,
                       "seconds": round(time.perf_counter() - t0, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="/tmp/hardened-model-data/transactions-synthetic.csv",
                   help="the synthetic transactions (default: scripts/make-transactions' default output)")
    args = p.parse_args()
    print(f"machine: {machine()}", flush=True)
    runs = []
    for run in itertools.chain(digits_runs(), tabular_runs(args.data)):  # printed as each ends
        print(json.dumps(run), flush=True)
        runs.append(run)
    print("| model | emaDecay | runs | means |")
    print("|---|---|---|---|")
    for model in dict.fromkeys(r["model"] for r in runs):
        for decay in DECAYS:
            rows = [r for r in runs if r["model"] == model and r["emaDecay"] == decay]
            keys = [k for k in rows[0] if k not in ("model", "emaDecay", "seed", "seconds")]
            figures = ", ".join(f"{k} {mean(r[k] for r in rows):.4f}" for k in keys)
            print(f"| {model} | {decay if decay is not None else 'none'} | {len(rows)} | {figures} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
