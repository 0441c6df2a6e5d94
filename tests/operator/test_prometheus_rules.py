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
