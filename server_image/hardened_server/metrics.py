"""Prometheus metrics of the serving processes (prometheus-client).

Label values are bounded: components and reasons are fixed strings, and
clients appear only as key ids (a sha256 prefix of a *valid* API key, so at
most one series per configured key); raw keys never appear anywhere.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _Metrics:
    def __init__(self):
        self.requests = Counter("hardened_requests_total", "Requests by component, outcome and reason",
                                ["component", "outcome", "reason"])
        self.latency = Histogram("hardened_request_duration_seconds", "Time spent handling a request",
                                 ["component"], buckets=_LATENCY_BUCKETS)
        self.low_confidence = Counter("hardened_low_confidence_total",
                                      "Predictions under the minimum confidence (flagged or abstained)", ["action"])
        self.predictions = Counter("hardened_predictions_total", "Predictions returned (rows)")
        self.rate_limited = Counter("hardened_rate_limited_total", "Requests refused by a token bucket", ["scope"])
        self.client_requests = Counter("hardened_client_requests_total", "Admitted requests by API key id",
                                       ["client"])
        self.batch_rows = Histogram("hardened_batch_rows", "Rows per forward pass", buckets=(1, 2, 4, 8, 16, 32, 64,
                                                                                            128, 256))
        self.verified = Gauge("hardened_model_verified", "1 when the served model's signature verified")
        self.model_info = Info("hardened_model", "The model being served")


METRICS = _Metrics()
