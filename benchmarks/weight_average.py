"""Should the weight average (training.emaDecay) be on by default under DP-SGD? Side by side in one run, the
DP models other than the MNIST rows (which efficacy.py measures), each trained with emaDecay 0.999 and without,
the rest of the settings the examples':

- the digits demo (examples/digits-demo.yaml: cnn-8x8, adversarial + DP-SGD at epsilon 8, 20 epochs), seeds
  0-2, on its 75% / 25% split of scikit-learn's digits: clean, FGSM and PGD-10 accuracy, MIA AUC;
- the fraud MLP (examples/fraud-tabular.yaml: DP-SGD at epsilon 3, with and without adversarial training),
  seeds 0-1, on benchmarks/tabular.py's split of the synthetic transactions: PR-AUC, recall at 0.5, robust
  recall, recall at precision >= 0.2.

    .venv/bin/python scripts/make-transactions --rows 100000
    .venv/bin/python benchmarks/weight_average.py [--data FILE] [--smoke]

Prints one JSON line per run, then the means per setting.
"""
from __future__ import annotations

import itertools
import json
import time
import warnings
from statistics import mean

import torch

from common import TRANSACTIONS, digits_spec, machine, make_transactions, small, smoke_parser

warnings.filterwarnings("ignore")
DECAYS = (None, 0.999)
# the digits demo as examples/digits-demo.yaml had it on 2026-11-30: PGD-5 on half of each batch, DP-SGD at
# epsilon 8, 20 epochs of batch 128 at learning rate 0.1; evaluated on its 450 test digits
DIGITS_DEMO = {"epochs": 20, "batchSize": 128, "learningRate": 0.1,
               "adversarial": {"enabled": True, "attack": "pgd", "eps": 0.1, "maxIter": 5, "ratio": 0.5},
               "privacy": {"enabled": True, "targetEpsilon": 8.0, "targetDelta": 1e-5, "maxGradNorm": 1.0,
                           "accountant": "prv"}}
DIGITS_EVALUATION = {"attacks": ["fgsm", "pgd"], "eps": 0.1, "pgdIter": 10, "membershipInference": True,
                     "maxSamples": 450}


def digits_runs(smoke: bool = False):
    from hardened_trainer.data import load_dataset, split
    from hardened_trainer.evaluate import evaluate
    from hardened_trainer.train import train

    parts = split(load_dataset("builtin:digits"), test_fraction=0.25, seed=0)
    parts = small(parts, 300, 100) if smoke else parts
    for decay in DECAYS:
        for seed in (0,) if smoke else (0, 1, 2):
            spec = digits_spec({**DIGITS_DEMO, "seed": seed, "emaDecay": decay, **({"epochs": 2} if smoke else {})},
                               evaluation=DIGITS_EVALUATION)
            t0 = time.perf_counter()
            res = train(spec, parts.x_train, parts.y_train, device=torch.device("cpu"), log=lambda *a, **k: None)
            ev = evaluate(res.model, spec, parts.x_train, parts.y_train, parts.x_test, parts.y_test,
                          epsilon=res.epsilon, labels=[str(i) for i in range(10)])
            yield {"model": "digits-demo", "emaDecay": decay, "seed": seed, "clean": ev.clean_accuracy,
                   "fgsm": ev.attack_accuracy["fgsm"], "pgd10": ev.attack_accuracy["pgd"],
                   "miaAUC": ev.membership_auc, "epsilon": ev.epsilon, "seconds": round(time.perf_counter() - t0, 1)}


def tabular_runs(data: str, smoke: bool = False):
    from tabular import recall_at_precision, spec_with, transactions_split

    from hardened_trainer.evaluate import positive_class_metrics, predict
    from hardened_trainer.train import train

    _, parts, cons = transactions_split(data)
    for name, adversarial in (("fraud MLP, DP-SGD", False), ("fraud MLP, adversarial + DP-SGD", True)):
        for decay in DECAYS:
            for seed in (0,) if smoke else (0, 1):
                spec = spec_with({"adversarial": {"enabled": adversarial}, "emaDecay": decay, "seed": seed}, data,
                                 smoke)
                t0 = time.perf_counter()
                res = train(spec, parts.x_train, parts.y_train, device=torch.device("cpu"), log=lambda *a, **k: None)
                figures = positive_class_metrics(res.model, parts.x_test, parts.y_test, spec, cons)
                score = predict(res.model, parts.x_test)[:, 1]
                yield {"model": name, "emaDecay": decay, "seed": seed, "prAUC": figures["prAUC"],
                       "recall": figures["recall"], "robustRecall": figures["robustRecall"],
                       "recallAtP20": recall_at_precision(parts.y_test, score), "epsilon": res.epsilon,
                       "seconds": round(time.perf_counter() - t0, 1)}


def main() -> int:
    p = smoke_parser(__doc__.split("\n\n")[0])
    p.add_argument("--data", default=TRANSACTIONS,
                   help="the synthetic transactions (default: scripts/make-transactions' default output; with "
                        "--smoke, a small fresh file)")
    args = p.parse_args()
    if args.smoke:
        from tabular import SMOKE_ROWS

        args.data = str(make_transactions(SMOKE_ROWS, 0, 0.05))
    print(f"machine: {machine()}", flush=True)
    runs = []
    for run in itertools.chain(digits_runs(args.smoke), tabular_runs(args.data, args.smoke)):  # printed as each ends
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
