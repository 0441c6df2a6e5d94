"""ServiceMonitor and PrometheusRule for one HardenedModel (created when the Prometheus Operator CRDs exist).

Thresholds come from ``spec.monitoring.alerts``; Prometheus selects the objects
by ``spec.monitoring.labels``. Every alert has a summary, a description and a
runbook in its annotations.
"""
from __future__ import annotations

from hardened_model.spec import HardenedModel
from .objects import _meta


def _sel(model: HardenedModel) -> str:
    return f'namespace="{model.metadata.namespace}",service="{model.metadata.name}-metrics"'


def build_service_monitor(model: HardenedModel) -> dict:
    meta = _meta(model, model.metadata.name, "monitoring")
    meta["labels"].update(model.spec.monitoring.labels)
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": meta,
            "spec": {"selector": {"matchLabels": {"hardened.dev/model": model.metadata.name,
                                                  "app.kubernetes.io/component": "metrics"}},
                     "namespaceSelector": {"matchNames": [model.metadata.namespace]},
                     "endpoints": [{"port": p, "interval": "30s", "path": "/metrics"}
                                   for p in ("model-metrics", "validation-metrics", "ratelimit-metrics")]}}


def _alert(name: str, expr: str, for_: str, severity: str, summary: str, description: str, runbook: str) -> dict:
    return {"alert": name, "expr": expr, "for": for_, "labels": {"severity": severity},
            "annotations": {"summary": summary, "description": description, "runbook": runbook}}


def build_rule_groups(model: HardenedModel) -> list[dict]:
    """The rule groups (shared by the PrometheusRule and the promtool tests)."""
    a = model.spec.monitoring.alerts
    sel = _sel(model)
    name = model.metadata.name
    pre = "hardened_model"
    rec = [
        {"record": f"{pre}:requests:rate5m", "expr": f'sum by (namespace, service) (rate(hardened_requests_total'
                                                     f'{{{sel},component="ratelimit"}}[5m]))'},
        {"record": f"{pre}:rate_limited:ratio5m",
         "expr": f'sum by (namespace, service) (rate(hardened_requests_total{{{sel},component="ratelimit",'
                 f'reason="rate_limited"}}[5m])) / clamp_min({pre}:requests:rate5m, 1e-9)'},
        {"record": f"{pre}:validation_rejected:ratio5m",
         "expr": f'sum by (namespace, service) (rate(hardened_requests_total{{{sel},component="validation",'
                 f'outcome="rejected"}}[5m])) / clamp_min({pre}:requests:rate5m, 1e-9)'},
        {"record": f"{pre}:low_confidence:ratio5m",
         "expr": f'sum by (namespace, service) (rate(hardened_low_confidence_total{{{sel}}}[5m])) / '
                 f'clamp_min(sum by (namespace, service) (rate(hardened_predictions_total{{{sel}}}[5m])), 1e-9)'},
        {"record": f"{pre}:top_client:ratio5m",
         "expr": f'max by (namespace, service) (sum by (namespace, service, client) '
                 f'(rate(hardened_client_requests_total{{{sel}}}[5m]))) / clamp_min(sum by (namespace, service) '
                 f'(rate(hardened_client_requests_total{{{sel}}}[5m])), 1e-9)'},
        {"record": f"{pre}:latency_p99:5m",
         "expr": f'histogram_quantile(0.99, sum by (namespace, service, le) (rate('
                 f'hardened_request_duration_seconds_bucket{{{sel},component="ratelimit"}}[5m])))'},
    ]
    rb = "docs/runbooks.md#"
    alerts = [
        _alert("HardenedModelRateLimitRejectionsHigh", f'{pre}:rate_limited:ratio5m{{{sel}}} > {a.rate_limited_ratio}',
               "10m", "warning", f"{name}: many requests rejected by the rate limiter",
               "{{ $value | humanizePercentage }} of requests got 429 over 5 minutes: a client is flooding the "
               "endpoint, or the limits are too tight for real traffic.",
               rb + "rate-limit-rejections"),
        _alert("HardenedModelValidationRejectionsSpike",
               f'{pre}:validation_rejected:ratio5m{{{sel}}} > {a.validation_rejected_ratio}', "10m", "warning",
               f"{name}: many requests rejected by input validation",
               "{{ $value | humanizePercentage }} of requests were malformed or out of range: a broken client, "
               "or someone probing the input checks.", rb + "validation-rejections"),
        _alert("HardenedModelLowConfidenceSpike", f'{pre}:low_confidence:ratio5m{{{sel}}} > {a.low_confidence_ratio}',
               "15m", "warning", f"{name}: many low-confidence predictions (possible evasion probing)",
               "{{ $value | humanizePercentage }} of predictions fell under the minimum confidence: adversarial "
               "probing near the decision boundary, or a shift in the input distribution.", rb + "low-confidence"),
        _alert("HardenedModelClientDominatesTraffic",
               f'{pre}:top_client:ratio5m{{{sel}}} > {a.client_dominance_ratio} and {pre}:requests:rate5m{{{sel}}} > 1',
               "30m", "warning", f"{name}: one API key sends most of the traffic (possible model extraction)",
               "One client sent {{ $value | humanizePercentage }} of admitted requests for 30 minutes. "
               "Systematic querying is how models are stolen; check that key's pattern.", rb + "client-dominance"),
        _alert("HardenedModelLatencyHigh", f'{pre}:latency_p99:5m{{{sel}}} > {a.p99_latency_seconds}', "10m",
               "warning", f"{name}: p99 latency above {a.p99_latency_seconds}s",
               "p99 is {{ $value | humanizeDuration }}: overload, a sponge attack with costly inputs, or "
               "too few replicas.", rb + "latency"),
        _alert("HardenedModelServerErrors",
               f'sum by (namespace, service) (rate(hardened_requests_total{{{sel},outcome=~"upstream_error|rejected",'
               f'reason=~"5..|internal_error|upstream_error"}}[5m])) > 0', "5m", "critical",
               f"{name}: server errors", "The chain answered 5xx in the last 5 minutes; see the pod logs.",
               rb + "server-errors"),
        _alert("HardenedModelKeyGuessing",
               f'sum by (namespace, service) (rate(hardened_auth_failures_total{{{sel}}}[5m])) > '
               f'{a.failed_auth_per_second}', "5m", "warning",
               f"{name}: many failed authentications (possible key or token guessing)",
               "{{ $value | humanize }} failed authentications per second over 5 minutes. Each address is "
               "throttled after rateLimit.failedAuth failures; many addresses at once, or a client with a revoked "
               "key, look the same here: check the sidecar's \"rejected\" log lines.", rb + "key-guessing"),
        _alert("HardenedModelRateLimitStorageDown",
               f'min by (namespace, service) (hardened_ratelimit_storage_up{{{sel}}}) < 1 or sum by (namespace, '
               f'service) (rate(hardened_ratelimit_fallback_total{{{sel}}}[5m])) > 0', "2m", "critical",
               f"{name}: the rate limiter cannot reach its storage",
               "The rate-limit sidecars decide without redis: with failMode closed they answer 503, with open "
               "each replica limits on its own (the shared limits and quotas do not hold).",
               rb + "rate-limit-storage"),
        _alert("HardenedModelNotVerified", f'min by (namespace, service) (hardened_model_verified{{{sel}}}) < 1',
               "1m", "critical", f"{name}: a serving pod runs an unverified model",
               "A model server reports hardened_model_verified 0.", rb + "not-verified"),
        _alert("HardenedModelVerificationFailed",
               f'max by (namespace, name) (hardened_operator_verification_failures_total{{namespace="'
               f'{model.metadata.namespace}",name="{name}"}}) > 0', "0m", "critical",
               f"{name}: a model version failed verification",
               "A trained version failed its signature or gates check and was not rolled out; the previous "
               "version keeps serving. kubectl describe hm shows why.", rb + "verification-failed"),
        _alert("HardenedModelTrainingFailed",
               f'max by (namespace, name) (hardened_operator_training_failures_total{{namespace="'
               f'{model.metadata.namespace}",name="{name}"}}) > 0', "0m", "warning",
               f"{name}: training failed", "The training Job failed; status.lastFailure has the reason.",
               rb + "training-failed"),
        _alert("HardenedModelPrivacyBudgetExceeded",
               f'max by (namespace, name) (hardened_operator_model_epsilon{{namespace="{model.metadata.namespace}",'
               f'name="{name}"}}) > {model.spec.gates.max_epsilon or model.spec.training.privacy.target_epsilon or 0}',
               "0m", "critical", f"{name}: privacy budget exceeded",
               "The served model's ε is above the allowed budget.", rb + "privacy-budget"),
    ]
    if not model.spec.training.privacy.enabled:
        alerts = [x for x in alerts if x["alert"] != "HardenedModelPrivacyBudgetExceeded"]
    return [{"name": f"hardened-model.{name}.rules", "rules": rec},
            {"name": f"hardened-model.{name}.alerts", "rules": alerts}]


def build_prometheus_rule(model: HardenedModel) -> dict:
    meta = _meta(model, model.metadata.name, "monitoring")
    meta["labels"].update(model.spec.monitoring.labels)
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": meta,
            "spec": {"groups": build_rule_groups(model)}}
