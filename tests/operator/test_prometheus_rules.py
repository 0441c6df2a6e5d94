"""The PrometheusRule the operator creates, checked by Prometheus' own promtool (Debian package)."""
import shutil
import subprocess

import pytest
import yaml

from hardened_operator.manifests.monitoring import build_rule_groups
from hardened_operator.spec import parse_manifest
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
    tests = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [
        {   # half of all requests rejected with 429 for 20 minutes: fires (threshold 0.2 for 10m)
            "interval": "1m",
            "input_series": [
                {"series": f'hardened_requests_total{{{sel},component="ratelimit",outcome="rejected",'
                           f'reason="rate_limited"}}', "values": "0+60x40"},
                {"series": f'hardened_requests_total{{{sel},component="ratelimit",outcome="forwarded",'
                           f'reason="200"}}', "values": "0+60x40"}],
            "alert_rule_test": [
                {"eval_time": "25m", "alertname": rl["alert"],
                 "exp_alerts": [{"exp_labels": {**svc, "severity": "warning"}, "exp_annotations": _expected(rl, "50%")}]},
                {"eval_time": "25m", "alertname": dom["alert"], "exp_alerts": []}]},
        {   # 5% rejected: quiet
            "interval": "1m",
            "input_series": [
                {"series": f'hardened_requests_total{{{sel},component="ratelimit",outcome="rejected",'
                           f'reason="rate_limited"}}', "values": "0+3x40"},
                {"series": f'hardened_requests_total{{{sel},component="ratelimit",outcome="forwarded",'
                           f'reason="200"}}', "values": "0+57x40"}],
            "alert_rule_test": [{"eval_time": "25m", "alertname": rl["alert"], "exp_alerts": []}]},
        {   # one key sends 9 of every 10 admitted requests for 40 minutes: extraction alert fires
            "interval": "1m",
            "input_series": [
                {"series": f'hardened_client_requests_total{{{sel},client="aaaaaaaaaaaa"}}', "values": "0+540x60"},
                {"series": f'hardened_client_requests_total{{{sel},client="bbbbbbbbbbbb"}}', "values": "0+60x60"},
                {"series": f'hardened_requests_total{{{sel},component="ratelimit",outcome="forwarded",'
                           f'reason="200"}}', "values": "0+600x60"}],
            "alert_rule_test": [
                {"eval_time": "45m", "alertname": dom["alert"],
                 "exp_alerts": [{"exp_labels": {**svc, "severity": "warning"}, "exp_annotations": _expected(dom, "90%")}]},
                {"eval_time": "20m", "alertname": dom["alert"], "exp_alerts": []}]},  # not yet 30 minutes
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
