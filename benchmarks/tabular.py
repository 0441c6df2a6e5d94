"""Fraud scoring on the synthetic transactions (issue 15), side by side in one run:

    .venv/bin/python scripts/make-transactions --rows 100000        # the file, SYNTHETIC, seed 0
    .venv/bin/python benchmarks/tabular.py [--data FILE] [--smoke]

scikit-learn's RandomForest with balanced class weights (the usual model for this task), and the project's
tabular-mlp non-private, under DP-SGD at epsilon <= 3, adversarially trained under DP-SGD, and adversarially
trained without DP, each with the fraud MLP's settings (benchmarks/common.py: FRAUD_TRAINING, as
examples/fraud-tabular.yaml had them) on the same 75% / 25% split (seed 0).
For the positive class: PR-AUC (average precision), recall at the threshold 0.5, the best recall at
precision >= 0.2, and robust recall: the share of test frauds still flagged under ART's PGD (10 steps, 0.3
standard deviations, amount and hour only, within their bounds, hours whole). The forest has no gradient:
its robust recall is measured on the examples PGD makes against the non-private MLP (a transfer attack).
"""
from __future__ import annotations

import json
import time

import torch

from common import TRANSACTIONS, fraud_spec, make_transactions, smoke_parser

SMOKE_ROWS = 1500  # --smoke: a fresh file this small, 5% fraud, 3 epochs, a forest of 20 trees


def spec_with(training: dict, source: str, smoke: bool = False):
    """The fraud MLP on ``source`` with ``training`` merged into its settings."""
    from helpers import merge_patch

    return fraud_spec(merge_patch(training, {"epochs": 3}) if smoke else training, source)


def transactions_split(data: str):
    """The table, its 75% / 25% split (seed 0) and the attack constraints of the training part."""
    from hardened_trainer.data import Dataset, split
    from hardened_trainer.tabular import constraints, load_table

    base = spec_with({}, data)
    table = load_table(base.data)
    parts = split(Dataset(x=table.x, y=table.y, raw_scale=1.0, source=table.source), test_fraction=0.25, seed=0)
    return table, parts, constraints(base.data.features, parts.x_train)


def recall_at_precision(y, score, floor=0.2) -> float:
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(y, score)
    ok = precision >= floor
    return float(recall[ok].max()) if ok.any() else 0.0


def main() -> int:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import average_precision_score

    from hardened_trainer.evaluate import adversarial_examples, positive_class_metrics, predict
    from hardened_trainer.train import train

    p = smoke_parser(__doc__.split("\n\n")[0])
    p.add_argument("--data", default=TRANSACTIONS,
                   help="the synthetic transactions (default: scripts/make-transactions' default output; with "
                        "--smoke, a small fresh file)")
    args = p.parse_args()
    if args.smoke:
        args.data = str(make_transactions(SMOKE_ROWS, 0, 0.05))
    table, parts, cons = transactions_split(args.data)
    pos = parts.y_test == 1
    print(f"{len(table)} rows ({int(table.y.sum())} fraud); test split {len(parts.y_test)} rows, "
          f"{int(pos.sum())} fraud; torch {torch.__version__}, {torch.get_num_threads()} threads")

    rows, models = [], {}
    variants = [("MLP, non-private", {"privacy": {"enabled": False}, "adversarial": {"enabled": False}}),
                ("MLP, DP-SGD (eps <= 3)", {"adversarial": {"enabled": False}}),
                ("MLP, adversarial + DP-SGD (eps <= 3)", {}),
                ("MLP, adversarial, non-private", {"privacy": {"enabled": False}})]
    for name, overrides in variants:
        spec = spec_with(overrides, args.data, args.smoke)
        t0 = time.perf_counter()
        result = train(spec, parts.x_train, parts.y_train, device=torch.device("cpu"), log=lambda *a, **k: None)
        seconds = time.perf_counter() - t0
        figures = positive_class_metrics(result.model, parts.x_test, parts.y_test, spec, cons)
        score = predict(result.model, parts.x_test)[:, 1]
        models[name] = result.model
        rows.append({"model": name, "prAUC": figures["prAUC"], "recall": figures["recall"],
                     "recallAtP20": recall_at_precision(parts.y_test, score), "robustRecall": figures["robustRecall"],
                     "epsilon": result.epsilon, "seconds": seconds})

    t0 = time.perf_counter()
    trees = 20 if args.smoke else 300
    forest = RandomForestClassifier(n_estimators=trees, min_samples_leaf=5, class_weight="balanced", n_jobs=-1,
                                    random_state=0).fit(parts.x_train, parts.y_train)
    seconds = time.perf_counter() - t0
    score = forest.predict_proba(parts.x_test)[:, 1]
    x_adv = adversarial_examples(models["MLP, non-private"], parts.x_test[pos], parts.y_test[pos], "pgd", eps=0.3,
                                 pgd_iter=10, input_shape=[9], num_classes=2, cons=cons)
    rows.insert(0, {"model": f"RandomForest (balanced, {trees} trees)", "prAUC": float(average_precision_score(
        parts.y_test, score)), "recall": float((score[pos] >= 0.5).mean()),
        "recallAtP20": recall_at_precision(parts.y_test, score),
        "robustRecall": float((forest.predict_proba(x_adv)[:, 1] >= 0.5).mean()), "epsilon": None,
        "seconds": seconds, "transfer": True})

    print("| model | PR-AUC | recall (0.5) | recall at precision >= 0.2 | robust recall | robust / clean recall "
          "| epsilon | training s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["robustRecall"] / r["recall"] if r["recall"] else float("nan")
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        transfer = " (transfer)" if r.get("transfer") else ""
        print(f"| {r['model']} | {r['prAUC']:.3f} | {r['recall']:.3f} | {r['recallAtP20']:.3f} | "
              f"{r['robustRecall']:.3f}{transfer} | {ratio:.2f} | {eps} | {r['seconds']:.1f} |")
    mlp = {r["model"]: r for r in rows}
    gap = mlp["MLP, non-private"]["prAUC"] - mlp["MLP, DP-SGD (eps <= 3)"]["prAUC"]
    print(f"DP-SGD at eps <= 3 vs non-private PR-AUC: {gap:+.3f} (goal: within 0.05)")
    for name in ("MLP, adversarial + DP-SGD (eps <= 3)", "MLP, adversarial, non-private"):
        r = mlp[name]
        print(f"{name}: robust recall / clean recall {r['robustRecall'] / r['recall']:.2f} (goal >= 0.8)")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
