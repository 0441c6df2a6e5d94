"""Prometheus metrics of the operator itself."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram


class OperatorMetrics:
    def __init__(self, registry=None):
        kw = {"registry": registry} if registry is not None else {}
        self.reconciles = Counter("hardened_operator_reconciles_total", "Reconcile passes by result", ["result"], **kw)
        self.duration = Histogram("hardened_operator_reconcile_duration_seconds", "Reconcile pass duration", **kw)
        self.errors = Counter("hardened_operator_errors_total", "Reconcile passes that raised", ["kind"], **kw)
        self.training_failures = Counter("hardened_operator_training_failures_total", "Training Jobs that failed",
                                         ["namespace", "name"], **kw)
        self.verification_failures = Counter("hardened_operator_verification_failures_total",
                                             "Versions refused by verification (signature or gates)",
                                             ["namespace", "name"], **kw)
        self.epsilon = Gauge("hardened_operator_model_epsilon", "Privacy budget spent by the verified version",
                             ["namespace", "name"], **kw)
        # The other signed figures of the verified version, for the dashboard (status.metrics has the same).
        self.clean_accuracy = Gauge("hardened_operator_model_clean_accuracy", "Clean accuracy of the verified "
                                    "version", ["namespace", "name"], **kw)
        self.robust_accuracy = Gauge("hardened_operator_model_robust_accuracy", "Robust accuracy (under the "
                                     "evaluated attacks) of the verified version", ["namespace", "name"], **kw)
        self.membership_auc = Gauge("hardened_operator_model_membership_auc", "Membership-inference attack AUC "
                                    "against the verified version", ["namespace", "name"], **kw)
        # tabular models: the positive class (data.positiveClass), the figures its gates read
        self.positive = {key: Gauge(f"hardened_operator_model_{name}", f"{text} of the positive class of the "
                                    "verified version (tabular models)", ["namespace", "name"], **kw)
                         for key, name, text in (("recall", "recall", "Recall"),
                                                 ("precision", "precision", "Precision"),
                                                 ("prAUC", "pr_auc", "Area under the precision-recall curve"),
                                                 ("balancedAccuracy", "balanced_accuracy", "Balanced accuracy"),
                                                 ("robustRecall", "robust_recall", "Recall under the attacks"))}

    def model_gauges(self) -> dict:
        """status.metrics key -> its gauge."""
        return {"epsilon": self.epsilon, "cleanAccuracy": self.clean_accuracy, "robustAccuracy": self.robust_accuracy,
                "membershipAUC": self.membership_auc, **self.positive}


METRICS = OperatorMetrics()
