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


METRICS = OperatorMetrics()
