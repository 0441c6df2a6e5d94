"""Prometheus metrics of the serving processes (prometheus-client).

Label values are bounded: components and reasons are fixed strings, and
clients appear only as client ids of *authenticated* callers (a key file's
``client=`` or the key id, a sha256 prefix of a valid key; a JWT's client claim),
so at most one series per configured key or token subject; raw keys and
tokens never appear anywhere, nor do the addresses of failed callers.
"""
from __future__ import annotations

import time

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
        self.client_requests = Counter("hardened_client_requests_total", "Admitted requests by client id",
                                       ["client"])
        self.auth_failures = Counter("hardened_auth_failures_total",
                                     "Failed authentications (wrong, missing or invalid key or token)")
        self.auth_throttled = Counter("hardened_auth_throttled_total",
                                      "Requests refused because their address used up its failed-authentication budget")
        self.limiter_storage_up = Gauge("hardened_ratelimit_storage_up",
                                        "1 while the rate-limit storage answers (always 1 for memory://)")
        self.limiter_storage_errors = Counter("hardened_ratelimit_storage_errors_total",
                                              "Rate-limit storage calls that failed or timed out")
        self.limiter_fallback = Counter("hardened_ratelimit_fallback_total",
                                        "Limiter decisions made without the shared storage, by failMode",
                                        ["mode"])
        self.batch_rows = Histogram("hardened_batch_rows", "Rows per forward pass", buckets=(1, 2, 4, 8, 16, 32, 64,
                                                                                            128, 256))
        self.verified = Gauge("hardened_model_verified", "1 when the served model's signature verified")
        self.model_info = Info("hardened_model", "The model being served")


METRICS = _Metrics()


class Timer:
    """A request's wall time for the latency histogram: perf_counter, which no clock step moves."""

    def __init__(self):
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
