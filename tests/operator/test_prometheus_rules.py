"""The PrometheusRule the operator creates, checked by Prometheus' own promtool (Debian package)."""
import shutil
import subprocess

import pytest
import yaml

from hardened_operator.manifests.monitoring import build_rule_groups
from hardened_model.spec import parse_manifest
from helpers import EXAMPLES, example

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: run ./scripts/setup")


def rules_file(tmp_path, name="mnist-adv-dp"):
    doc = example(name)
    doc["metadata"]["namespace"] = "ml"
    model = parse_manifest(doc)
    groups = build_rule_groups(model)
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path, model, {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_rules_of_every_example_pass_promtool_check(tmp_path, path):
    rules, _, alerts = rules_file(tmp_path, path.stem)
    out = subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout
    assert len(alerts) >= 9


def _expected(rule, value_text):
    return {k: v.replace("{{ $value | humanizePercentage }}", value_text) for k, v in rule["annotations"].items()}


def test_security_alerts_fire_and_stay_quiet(tmp_path):
    rules, model, alerts = rules_file(tmp_path)
    svc = {"namespace": "ml", "service": f"{model.metadata.name}-metrics"}
    sel = 'namespace="ml",service="%s"' % svc["service"]
    rl = alerts["HardenedModelRateLimitRejectionsHigh"]
    dom = alerts["HardenedModelClientDominatesTraffic"]

    def requests(outcome, reason, per_minute):
        return {"series": f'hardened_requests_total{{{sel},component="ratelimit",outcome="{outcome}",'
                          f'reason="{reason}"}}', "values": f"0+{per_minute}x60"}

    def client(key_id, per_minute):
        return {"series": f'hardened_client_requests_total{{{sel},client="{key_id}"}}',
                "values": f"0+{per_minute}x60"}

    def fires(alert, at, value):
        return {"eval_time": at, "alertname": alert["alert"], "exp_alerts": [
            {"exp_labels": {**svc, "severity": "warning"}, "exp_annotations": _expected(alert, value)}]}

    def quiet(alert, at):
        return {"eval_time": at, "alertname": alert["alert"], "exp_alerts": []}

    tests = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [
        {   # half of all requests rejected with 429 for 25 minutes: fires (threshold 0.2 for 10m)
            "interval": "1m",
            "input_series": [requests("rejected", "rate_limited", 60), requests("forwarded", "200", 60)],
            "alert_rule_test": [fires(rl, "25m", "50%"), quiet(dom, "25m")]},
        {   # 5% rejected: quiet
            "interval": "1m",
            "input_series": [requests("rejected", "rate_limited", 3), requests("forwarded", "200", 57)],
            "alert_rule_test": [quiet(rl, "25m")]},
        {   # one key sends 9 of every 10 admitted requests: the extraction alert fires after 30 minutes
            "interval": "1m",
            "input_series": [client("aaaaaaaaaaaa", 540), client("bbbbbbbbbbbb", 60),
                             requests("forwarded", "200", 600)],
            "alert_rule_test": [fires(dom, "45m", "90%"), quiet(dom, "20m")]},
    ]}
    spec = tmp_path / "tests.yaml"
    spec.write_text(yaml.safe_dump(tests, sort_keys=False))
    out = subprocess.run([PROMTOOL, "test", "rules", str(spec)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_links_to_a_runbook_section_that_exists(tmp_path):
    import re

    from helpers import ROOT

    sections = set(re.findall(r"^## (\S+)", (ROOT / "docs/runbooks.md").read_text(), re.M))
    _, _, alerts = rules_file(tmp_path)
    for alert in alerts.values():
        page, anchor = alert["annotations"]["runbook"].split("#")
        assert page == "docs/runbooks.md" and anchor in sections, alert["alert"]


def test_every_other_alert_fires_and_stays_quiet(tmp_path):
    """The remaining alerts, each with a series that must fire it and one that must not."""
    rules, model, alerts = rules_file(tmp_path)
    svc = {"namespace": "ml", "service": f"{model.metadata.name}-metrics"}
    sel = 'namespace="ml",service="%s"' % svc["service"]
    owner = {"namespace": "ml", "name": model.metadata.name}
    osel = 'namespace="ml",name="%s"' % model.metadata.name

    def series(name, labels, values):
        return {"series": f"{name}{{{labels}}}", "values": values}

    def admitted(per_minute=60):
        return series("hardened_requests_total", f'{sel},component="ratelimit",outcome="forwarded",reason="200"',
                      f"0+{per_minute}x60")

    def expect(alert, at, labels, severity, **values):
        ann = dict(alert["annotations"])
        for template, text in values.items():
            token = "{{ $value | %s }}" % template
            ann = {k: v.replace(token, text) for k, v in ann.items()}
        return {"eval_time": at, "alertname": alert["alert"],
                "exp_alerts": [{"exp_labels": {**labels, "severity": severity}, "exp_annotations": ann}]}

    def quiet(alert, at):
        return {"eval_time": at, "alertname": alert["alert"], "exp_alerts": []}

    def case(inputs, *checks):
        return {"interval": "1m", "input_series": inputs, "alert_rule_test": list(checks)}

    val, low = alerts["HardenedModelValidationRejectionsSpike"], alerts["HardenedModelLowConfidenceSpike"]
    lat, err = alerts["HardenedModelLatencyHigh"], alerts["HardenedModelServerErrors"]
    nv, vf = alerts["HardenedModelNotVerified"], alerts["HardenedModelVerificationFailed"]
    tf, eps = alerts["HardenedModelTrainingFailed"], alerts["HardenedModelPrivacyBudgetExceeded"]
    guess, store = alerts["HardenedModelKeyGuessing"], alerts["HardenedModelRateLimitStorageDown"]

    def bucket(le, per_minute):
        return series("hardened_request_duration_seconds_bucket", f'{sel},component="ratelimit",le="{le}"',
                      f"0+{per_minute}x60")

    tests = [
        # validation rejects half of what the rate limiter admitted, for 25 minutes: fires (0.1 for 10m)
        case([admitted(), series("hardened_requests_total", f'{sel},component="validation",outcome="rejected",'
                                                            f'reason="nan"', "0+30x60")],
             expect(val, "25m", svc, "warning", humanizePercentage="50%"), quiet(val, "5m")),
        case([admitted(), series("hardened_requests_total", f'{sel},component="validation",outcome="rejected",'
                                                            f'reason="nan"', "0+3x60")], quiet(val, "40m")),
        # half of the predictions under the minimum confidence: fires after 15 minutes (0.2)
        case([series("hardened_low_confidence_total", f'{sel},action="flag"', "0+30x60"),
              series("hardened_predictions_total", sel, "0+60x60")],
             expect(low, "30m", svc, "warning", humanizePercentage="50%"), quiet(low, "12m")),
        case([series("hardened_low_confidence_total", f'{sel},action="flag"', "0+6x60"),
              series("hardened_predictions_total", sel, "0+60x60")], quiet(low, "40m")),
        # every request took between 0.5 s and 1 s: p99 is 0.995 s > 0.5 s
        case([bucket("0.5", 0), bucket("1", 60), bucket("+Inf", 60)],
             expect(lat, "25m", svc, "warning", humanizeDuration="995ms")),
        case([bucket("0.1", 60), bucket("0.5", 60), bucket("1", 60), bucket("+Inf", 60)], quiet(lat, "40m")),
        # upstream errors: any for 5 minutes is critical
        case([series("hardened_requests_total", f'{sel},component="validation",outcome="upstream_error",'
                                                f'reason="upstream_error"', "0+1x60")],
             expect(err, "10m", svc, "critical"), quiet(err, "3m")),
        case([admitted(), series("hardened_requests_total", f'{sel},component="validation",outcome="upstream_error",'
                                                            f'reason="upstream_error"', "0+0x60")], quiet(err, "30m")),
        # one pod reports an unverified model
        case([series("hardened_model_verified", f'{sel},pod="a"', "1x20"),
              series("hardened_model_verified", f'{sel},pod="b"', "0x20")], expect(nv, "5m", svc, "critical")),
        case([series("hardened_model_verified", f'{sel},pod="a"', "1x20")], quiet(nv, "10m")),
        # the operator refused a version / a training Job failed: at once
        case([series("hardened_operator_verification_failures_total", osel, "0 0 1 1 1 1"),
              series("hardened_operator_training_failures_total", osel, "0 0 0 1 1 1")],
             quiet(vf, "1m"), expect(vf, "2m", owner, "critical"), quiet(tf, "2m"),
             expect(tf, "4m", owner, "warning")),
        case([series("hardened_operator_verification_failures_total", osel, "0x10"),
              series("hardened_operator_training_failures_total", osel, "0x10")], quiet(vf, "9m"), quiet(tf, "9m")),
        # key guessing: 2 failed authentications per second (120 per minute) for 20 minutes fire (0.5/s for 5m);
        # 6 per minute (a client with an old key retrying) stay quiet
        case([admitted(), series("hardened_auth_failures_total", f'{sel},pod="a"', "0+120x60")],
             expect(guess, "15m", svc, "warning", humanize="2"), quiet(guess, "4m")),
        case([admitted(), series("hardened_auth_failures_total", f'{sel},pod="a"', "0+6x60")], quiet(guess, "40m")),
        # redis unreachable from one pod: critical after 2 minutes; a pod that always had it: quiet
        case([series("hardened_ratelimit_storage_up", f'{sel},pod="a"', "1 1 0 0 0 0 0 0"),
              series("hardened_ratelimit_storage_up", f'{sel},pod="b"', "1x8")],
             quiet(store, "3m"), expect(store, "6m", svc, "critical")),
        case([series("hardened_ratelimit_storage_up", f'{sel},pod="a"', "1x20"),
              series("hardened_ratelimit_fallback_total", f'{sel},pod="a",mode="closed"', "0x20")],
             quiet(store, "15m")),
        # ε of the served version above the spec's budget (3.0)
        case([series("hardened_operator_model_epsilon", osel, "3.4x10")], expect(eps, "5m", owner, "critical")),
        case([series("hardened_operator_model_epsilon", osel, "2.99x10")], quiet(eps, "9m")),
    ]
    covered = {t["alertname"] for c in tests for t in c["alert_rule_test"]}
    assert covered | {"HardenedModelRateLimitRejectionsHigh", "HardenedModelClientDominatesTraffic"} == set(alerts)
    spec = tmp_path / "tests.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": tests},
                                   sort_keys=False))
    out = subprocess.run([PROMTOOL, "test", "rules", str(spec)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
