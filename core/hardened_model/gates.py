"""Gates: the verdict on a model's metrics (pure, torch-free).

The trainer records a verdict in metrics.json; the verifier and the operator
re-check the *signed* metrics against the spec's gates as they are now, so a
gate tightened after training still holds back a model that misses it.
"""
from __future__ import annotations

from dataclasses import dataclass

from .spec import GatesSection


# The signed figures that the verification result, status.metrics and the operator's gauges carry (the gates
# read them); the last five exist for tabular models only (the positive class, data.positiveClass).
STATUS_METRICS = ("cleanAccuracy", "robustAccuracy", "epsilon", "membershipAUC",
                  "recall", "precision", "prAUC", "balancedAccuracy", "robustRecall")


@dataclass
class GateResult:
    gate: str
    threshold: float
    value: float | None
    passed: bool

    def describe(self) -> str:
        value = "not measured" if self.value is None else f"{self.value:.4f}"
        return f"{self.gate}: {value} ({'passed' if self.passed else 'FAILED'}, threshold {self.threshold})"


def check_gates(metrics: dict, gates: GatesSection) -> list[GateResult]:
    """Every configured gate with its verdict. A metric that was not measured fails its gate."""
    checks = [("minCleanAccuracy", gates.min_clean_accuracy, "cleanAccuracy", lambda v, t: v >= t),
              ("minRobustAccuracy", gates.min_robust_accuracy, "robustAccuracy", lambda v, t: v >= t),
              ("maxEpsilon", gates.max_epsilon, "epsilon", lambda v, t: v <= t),
              ("maxMembershipAUC", gates.max_membership_auc, "membershipAUC", lambda v, t: v <= t),
              # the positive class of tabular data (data.positiveClass)
              ("minRecall", gates.min_recall, "recall", lambda v, t: v >= t),
              ("minPrecision", gates.min_precision, "precision", lambda v, t: v >= t),
              ("minPRAUC", gates.min_pr_auc, "prAUC", lambda v, t: v >= t),
              ("minBalancedAccuracy", gates.min_balanced_accuracy, "balancedAccuracy", lambda v, t: v >= t),
              ("minRobustRecall", gates.min_robust_recall, "robustRecall", lambda v, t: v >= t)]
    out = []
    for gate, threshold, key, ok in checks:
        if threshold is None:
            continue
        value = metrics.get(key)
        valid = isinstance(value, (int, float)) and not isinstance(value, bool)
        out.append(GateResult(gate, threshold, value if valid else None, valid and bool(ok(value, threshold))))
    return out
