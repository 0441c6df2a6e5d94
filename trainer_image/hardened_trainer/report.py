"""The HTML robustness report: one self-contained file (plots embedded), signed with the model."""
from __future__ import annotations

import base64
import html
import io

from hardened_model.gates import GateResult

from .evaluate import Evaluation


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _plots(ev: Evaluation, history: list[dict]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {}
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for attack, points in ev.sweep.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=attack.upper())
    ax.set(xlabel="L∞ eps (input units)", ylabel="accuracy", ylim=(0, 1.02),
           title="Accuracy vs attack strength (ART)")
    ax.grid(alpha=0.3)
    ax.legend()
    plots["accuracy-vs-eps"] = _png(fig)

    eps_points = [(h["epoch"], h["epsilon"]) for h in history if h.get("epsilon") is not None]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    if eps_points:
        ax.plot(*zip(*eps_points), marker=".", color="tab:purple")
        ax.set(xlabel="epoch", ylabel="ε spent", title="Privacy budget (DP-SGD accountant)")
    else:
        ax.text(0.5, 0.5, "trained without DP-SGD: ε unbounded", ha="center", va="center")
        ax.set(title="Privacy budget", xticks=[], yticks=[])
    ax.grid(alpha=0.3)
    plots["epsilon"] = _png(fig)

    fig, ax = plt.subplots(figsize=(4, 3.4))
    if ev.mia_roc:
        ax.plot([p[0] for p in ev.mia_roc], [p[1] for p in ev.mia_roc], label=f"AUC {ev.membership_auc:.3f}")
        ax.plot([0, 1], [0, 1], "--", color="grey", label="chance")
        ax.legend(loc="lower right")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="Membership inference ROC")
    ax.grid(alpha=0.3)
    plots["mia-roc"] = _png(fig)

    if ev.positive is not None:  # tabular: the positive class (data.positiveClass)
        pos = ev.positive
        fig, ax = plt.subplots(figsize=(4.4, 3.4))
        ax.plot([p[0] for p in pos["prCurve"]], [p[1] for p in pos["prCurve"]], label=f"PR-AUC {pos['prAUC']:.3f}")
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02),
               title="Precision-recall, positive class")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right")
        plots["pr-curve"] = _png(fig)
        fig, ax = plt.subplots(figsize=(3.6, 3.2))
        matrix = pos["confusionMatrix"]
        ax.imshow(matrix, cmap="Blues")
        for i in range(2):
            for j in range(2):
                ax.text(j, i, str(matrix[i][j]), ha="center", va="center", color="black")
        ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["negative", "positive"],
               yticklabels=["negative", "positive"], xlabel="predicted", ylabel="true", title="Confusion matrix")
        plots["confusion-matrix"] = _png(fig)
    return plots


def _fmt(value) -> str:
    return "—" if value is None else (f"{value:.4f}" if isinstance(value, float) else html.escape(str(value)))


def render_report(*, model_name: str, version: str, architecture: str, ev: Evaluation, gates: list[GateResult],
                  history: list[dict], sanitization: dict, training: dict) -> str:
    plots = _plots(ev, history)
    passed = all(g.passed for g in gates)
    verdict = "PASSED" if passed else "FAILED"
    rows = "".join(f"<tr><td>{html.escape(g.gate)}</td><td>{_fmt(g.threshold)}</td><td>{_fmt(g.value)}</td>"
                   f"<td class='{'ok' if g.passed else 'bad'}'>{'pass' if g.passed else 'fail'}</td></tr>"
                   for g in gates) or "<tr><td colspan=4>no gates configured</td></tr>"
    metrics = ev.metrics() | {f"accuracy under {k.upper()}": v for k, v in ev.attack_accuracy.items()}
    metric_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in metrics.items())
    class_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>"
                         for k, v in ev.per_class_accuracy.items())
    train_rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{_fmt(v)}</td></tr>" for k, v in training.items())
    san_rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{_fmt(v)}</td></tr>" for k, v in sanitization.items())
    imgs = "".join(f"<figure><img alt='{name}' id='plot-{name}' src='data:image/png;base64,{data}'></figure>"
                   for name, data in plots.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>Robustness report: {html.escape(model_name)} {html.escape(version)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1100px}}
table{{border-collapse:collapse;margin:.5rem 0 1.5rem}} td,th{{border:1px solid #ccc;padding:.3rem .7rem;text-align:left}}
.ok{{color:#176f2c;font-weight:600}} .bad{{color:#b00020;font-weight:600}}
figure{{display:inline-block;margin:0 1rem 1rem 0}} img{{max-width:480px}}
.verdict{{font-size:1.3rem}}
</style></head><body>
<h1>Robustness report: {html.escape(model_name)}</h1>
<p>version <code>{html.escape(version)}</code> · architecture <code>{html.escape(architecture)}</code> ·
evaluated on {ev.samples} held-out examples</p>
<p class="verdict">Gates: <span class="{'ok' if passed else 'bad'}" id="verdict">{verdict}</span></p>
<table id="gates"><tr><th>gate</th><th>threshold</th><th>value</th><th>result</th></tr>{rows}</table>
<h2>Metrics</h2><table id="metrics">{metric_rows}</table>
<h2>Plots</h2>{imgs}
<h2>Per-class accuracy</h2><table>{class_rows}</table>
<h2>Training</h2><table>{train_rows}</table>
<h2>Data sanitization</h2><table>{san_rows}</table>
<p>Robust accuracy: ART FastGradientMethod / ProjectedGradientDescent (L∞), lowest over the configured attacks.
Membership inference: loss-threshold attack (Yeom et al., CSF 2018) on equal numbers of training members and
held-out non-members. This report is inside the signed model directory.</p>
</body></html>
"""
