"""The Helm chart, with the real helm binary: lint, render, strict schema validation, values schema,
restricted pods, RBAC shape, the Grafana dashboard, and checkov over the chart and the rendered examples.
(The RBAC rules are also checked against every request the operator makes: tests/operator/test_operator_kmock.py.)
"""
import json
import os
import re
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from chart_support import CHART, HELM, Permission, allows, grants, helm, render, rules_of, set_args
from hardened_operator.crd import build_crd
from helpers import EXAMPLES, ROOT, restricted_pss_violations

pytestmark = pytest.mark.skipif(HELM is None, reason="helm missing: run ./scripts/setup")
K8S_VERSIONS = ["1.30.0", "1.33.0", "1.37.0"]
VARIANTS = {
    "default": [],
    "namespaced": ["watchNamespaces={ml,prod}", "metrics.serviceMonitor.enabled=true",
                   "image.digest=sha256:" + "a" * 64, "serviceAccount.annotations.team=ml-platform"],
    "minimal": ["metrics.enabled=false", "grafanaDashboard.enabled=false", "networkPolicy.enabled=false",
                "admissionPolicy.enabled=false"],
    "ha": ["replicas=2"],
    "ha-namespaced": ["replicas=3", "watchNamespaces={ml,prod}"],
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint_strict(variant):
    out = helm("lint", "--strict", str(CHART), *set_args(VARIANTS[variant]))
    assert "0 chart(s) failed" in out.stdout


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_rendered_object_passes_strict_validation(variant, version):
    objs = render(*VARIANTS[variant], crds=True)
    kinds = [o["kind"] for o in objs]
    assert kinds.count("Deployment") == 1 and "CustomResourceDefinition" in kinds
    for obj in objs:
        if obj["apiVersion"].startswith("monitoring.coreos.com"):
            assert obj["kind"] == "ServiceMonitor" and obj["spec"]["endpoints"][0]["port"] == "metrics"
            continue  # a Prometheus Operator CRD, not a core API
        if obj["apiVersion"] == "kopf.dev/v1":
            assert obj["kind"] in ("ClusterKopfPeering", "KopfPeering") and set(obj) == {"apiVersion", "kind",
                                                                                         "metadata"}
            continue  # kopf's peering CRD (crds/kopf-peerings.yaml), checked on a real apiserver in tests/e2e
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_chart_crd_is_the_generated_one():
    generated = build_crd()
    for path in (CHART / "crds/hardenedmodels.hardened.dev.yaml", ROOT / "crds/hardenedmodels.hardened.dev.yaml"):
        assert yaml.safe_load(path.read_text()) == generated, f"{path} is stale: run hardened-model crd > {path}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_operator_pod_is_restricted_and_runs_the_operator(variant):
    dep = next(o for o in render(*VARIANTS[variant]) if o["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert restricted_pss_violations(pod) == []
    (c,) = pod["containers"]
    if variant.startswith("ha"):
        assert c["args"][:2] == ["operator", "--peering=hardened-model"]
        assert dep["spec"]["replicas"] == (2 if variant == "ha" else 3)
        assert dep["spec"]["strategy"] == {"type": "RollingUpdate",
                                           "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
        anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
        assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    else:
        assert c["args"][:2] == ["operator", "--standalone"]
        assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    assert {"name": "POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in c["env"]
    if variant == "namespaced":
        assert c["image"] == "ghcr.io/hardened-model/operator@sha256:" + "a" * 64
        assert [a for a in c["args"] if a.startswith("--namespace")] == ["--namespace=ml", "--namespace=prod"]
    else:
        assert c["image"] == "ghcr.io/hardened-model/operator:0.1.0"
    # the CLI accepts exactly these arguments
    from hardened_operator.cli import build_parser
    args = build_parser().parse_args(c["args"])
    assert args.command == "operator"
    assert args.metrics_port == (0 if variant == "minimal" else 9090)


@pytest.mark.parametrize("variant", ["ha", "ha-namespaced"])
def test_ha_mode_installs_the_peering_object_a_pdb_and_peering_rbac(variant):
    objs = render(*VARIANTS[variant], crds=True)
    crds = {o["metadata"]["name"] for o in objs if o["kind"] == "CustomResourceDefinition"}
    assert {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"} <= crds
    peerings = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs
                if o["apiVersion"] == "kopf.dev/v1"]
    rules = rules_of(objs)
    if variant == "ha":
        assert peerings == [("ClusterKopfPeering", None, "hardened-model")]
        resource, scopes = "clusterkopfpeerings", [None]
    else:
        assert sorted(peerings) == [("KopfPeering", ns, "hardened-model") for ns in ("ml", "prod")]
        resource, scopes = "kopfpeerings", ["ml", "prod"]
    for ns in scopes:  # what kopf and the start-up check do, and nothing on other peering objects
        for verb, name in [("list", None), ("watch", None), ("get", "hardened-model"), ("patch", "hardened-model")]:
            assert allows(rules, Permission("kopf.dev", resource, verb, ns, name)), (verb, ns)
        assert not allows(rules, Permission("kopf.dev", resource, "patch", ns, "someone-elses"))
    (pdb,) = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"]["minAvailable"] == 1
    assert not [o for o in render() if o["kind"] == "PodDisruptionBudget" or o["apiVersion"] == "kopf.dev/v1"]
    assert not [r for _, r in rules_of(render()) if "kopf.dev" in r["apiGroups"]]  # standalone: no peering rights


def test_rbac_is_scoped_and_has_no_wildcards_deletes_or_secret_reads_in_bulk():
    for variant in VARIANTS:
        objs = render(*VARIANTS[variant])
        for obj in objs:
            for rule in obj.get("rules", []):
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[field], (variant, rule)
                assert not {"delete", "deletecollection", "update", "escalate", "bind", "impersonate"} & set(
                    rule["verbs"]), rule
                if "secrets" in rule["resources"]:
                    assert set(rule["verbs"]) == {"get", "create"}, rule  # never list/watch every Secret
    cluster = rules_of(render())
    namespaced = rules_of(render(*VARIANTS["namespaced"]))
    scoped = {ns for ns, _ in namespaced if ns}
    assert scoped == {"ml", "prod"}
    # the same namespaced grants, held as Roles in each watched namespace; cluster-wide only cluster-scoped
    # reads: CRDs, HardenedModelPolicies (issue 27) and Namespaces
    for ns in scoped:
        assert grants([r for r in namespaced if r[0] == ns]) == grants([r for r in cluster
                                                                        if not _cluster_scoped_rule(r[1])])
    assert {(g, r, v) for ns, rule in namespaced if ns is None for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]} == {("apiextensions.k8s.io", "customresourcedefinitions", v)
                                        for v in ("get", "list", "watch")} | {("", "namespaces", "list"),
                                                                              ("", "namespaces", "watch"),
                                                                              ("", "namespaces", "get")} | {
        ("hardened.dev", "hardenedmodelpolicies", v) for v in ("list", "watch")}
    # the policies are read, never written; a Namespace is read by name, with --namespace only a watched one
    for rules, namespaces in ((cluster, ["ml", "other"]), (namespaced, ["ml", "prod"])):
        for verb in ("get", "create", "patch", "update", "delete"):
            assert not allows(rules, Permission("hardened.dev", "hardenedmodelpolicies", verb, None, "strict"))
        assert all(allows(rules, Permission("", "namespaces", "get", None, ns)) for ns in namespaces)
    assert not allows(namespaced, Permission("", "namespaces", "get", None, "other"))


def _cluster_scoped_rule(rule):
    return bool({"customresourcedefinitions", "hardenedmodelpolicies", "namespaces"} & set(rule["resources"]))


def test_the_operator_is_given_the_verifier_image_a_digest_winning_over_the_tag():
    """Issue 27: the verify Jobs and init containers run the chart's verifier.image (HARDENED_VERIFIER_IMAGE),
    never a spec's serving image; by default the server image of the chart's appVersion."""
    def env(*sets):
        dep = next(o for o in render(*sets) if o["kind"] == "Deployment")
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        return {e["name"]: e.get("value") for e in c["env"]}["HARDENED_VERIFIER_IMAGE"]

    assert env() == "ghcr.io/hardened-model/server:0.1.0"
    assert env("verifier.image.repository=registry.platform.test/server", "verifier.image.tag=v7") == \
        "registry.platform.test/server:v7"
    assert env("verifier.image.tag=v7", "verifier.image.digest=sha256:" + "b" * 64) == \
        "ghcr.io/hardened-model/server@sha256:" + "b" * 64
    from hardened_operator.manifests.objects import DEFAULT_VERIFIER_IMAGE
    assert env() == DEFAULT_VERIFIER_IMAGE  # the operator's built-in default is the chart's
    out = helm("template", "hm", str(CHART), "--set", "verifier.image.digest=latest", check=False)
    assert out.returncode != 0 and "digest" in out.stderr


def test_the_platform_key_is_mounted_into_the_operator_only_when_set_and_rbac_is_unchanged():
    """Issue 27 point 4: platformSigning.secretName mounts that Secret read-only into the operator pod and
    names the file in HARDENED_PLATFORM_KEY_FILE; off by default (no env, no volume). The operator reads it
    from the mount, so RBAC is the same with it on: no Secret read is added."""
    def operator_pod(*sets):
        objs = render(*sets)
        dep = next(o for o in objs if o["kind"] == "Deployment")
        return dep["spec"]["template"]["spec"], objs

    plain, plain_objs = operator_pod()
    (c,) = plain["containers"]
    assert "HARDENED_PLATFORM_KEY_FILE" not in {e["name"] for e in c["env"]}
    assert "platform-signing" not in {v["name"] for v in plain["volumes"]}
    pod, objs = operator_pod("platformSigning.secretName=hm-platform-key", "platformSigning.key=ec.pem")
    (c,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["HARDENED_PLATFORM_KEY_FILE"] == "/var/run/secrets/hardened/platform-signing/ec.pem"
    mount = next(m for m in c["volumeMounts"] if m["name"] == "platform-signing")
    assert mount == {"name": "platform-signing", "mountPath": "/var/run/secrets/hardened/platform-signing",
                     "readOnly": True}
    volume = next(v for v in pod["volumes"] if v["name"] == "platform-signing")
    assert volume["secret"] == {"secretName": "hm-platform-key", "defaultMode": 0o440,
                                "items": [{"key": "ec.pem", "path": "ec.pem"}]}
    assert rules_of(objs) == rules_of(plain_objs)
    assert [o for o in objs if o["kind"] != "Deployment"] == [o for o in plain_objs if o["kind"] != "Deployment"]
    out = helm("template", "hm", str(CHART), "--set", "platformSigning.secretName=Bad_Name", check=False)
    assert out.returncode != 0 and "secretName" in out.stderr

def test_values_schema_rejects_unknown_and_mistyped_values():
    for bad, field in [("imagee.tag=x", "imagee"), ("metrics.prot=1", "prot"), ("healthPort=0", "healthPort"),
                       ("image.pullPolicy=Sometimes", "pullPolicy"), ("watchNamespaces={Bad_NS}", "watchNamespaces"),
                       ("containerSecurityContext.allowPrivilegeEscalation=true", "allowPrivilegeEscalation"),
                       ("admissionPolicy.enable=true", "enable")]:
        out = helm("template", "hm", str(CHART), "--set", bad, check=False)
        assert out.returncode != 0, bad
        assert field in out.stderr, (bad, out.stderr)


def test_every_value_is_documented_and_in_the_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(s, path=""):
        if s.get("type") == "object" and "properties" in s and s.get("additionalProperties") is not False \
                and path not in ("podSecurityContext", "containerSecurityContext"):
            raise AssertionError(f"{path or 'values'}: additionalProperties must be false")
        for k, sub in s.get("properties", {}).items():
            walk(sub, f"{path}.{k}".strip("."))
    walk(schema)
    assert set(values) <= set(schema["properties"])
    assert set(schema["properties"]) - set(values) == {"nameOverride", "fullnameOverride"}
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[A-Za-z]\w*:", line):  # every top-level key has a prose comment right above it
            assert lines[i - 1].startswith("#"), f"values.yaml: {line.split(':')[0]} has no comment"


def test_the_admission_policy_binds_every_hardened_model_policy_and_can_be_left_out():
    """Issue 27: the expressions themselves are checked in tests/operator/test_admission_policy.py and on the
    real apiserver in tests/e2e/test_tenant_policy.py."""
    objs = render()
    (vap,) = [o for o in objs if o["kind"] == "ValidatingAdmissionPolicy"]
    (binding,) = [o for o in objs if o["kind"] == "ValidatingAdmissionPolicyBinding"]
    assert vap["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert vap["spec"]["paramKind"] == {"apiVersion": "hardened.dev/v1alpha1", "kind": "HardenedModelPolicy"}
    assert vap["spec"]["failurePolicy"] == "Fail"
    assert vap["spec"]["matchConstraints"]["resourceRules"] == [
        {"apiGroups": ["hardened.dev"], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"],
         "resources": ["hardenedmodels"]}]
    assert binding["spec"] == {"policyName": vap["metadata"]["name"], "validationActions": ["Deny"],
                               "paramRef": {"selector": {}, "parameterNotFoundAction": "Allow"}}
    assert all(v["reason"] == "Forbidden" and v["messageExpression"] for v in vap["spec"]["validations"])
    assert not [o for o in render("admissionPolicy.enabled=false") if o["kind"].startswith("ValidatingAdmission")]


def test_notes_render_for_both_scopes():
    for variant, expected in [("default", "watches every namespace"), ("namespaced", "watches: ml, prod")]:
        out = helm("install", "hm", str(CHART), "--dry-run=client", "--namespace", "hardened-system",
                   *set_args(VARIANTS[variant])).stdout
        assert expected in out and "kubectl wait" in out


# ------------------------------------------------------------------ Grafana
DASHBOARD = CHART / "dashboards/hardened-model.json"


def _exported_metric_names() -> set[str]:
    from prometheus_client import CollectorRegistry

    from hardened_operator.manifests.monitoring import build_rule_groups
    from hardened_operator.operator_metrics import OperatorMetrics
    from hardened_model.spec import parse_manifest
    from hardened_server.metrics import METRICS  # noqa: F401  (registers the serving metrics globally)
    from helpers import example
    from prometheus_client import REGISTRY

    reg = CollectorRegistry()
    OperatorMetrics(registry=reg)
    names = set()
    for registry in (reg, REGISTRY):
        for family in registry.collect():
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "info": ["_info"],
                        "gauge": [""]}[family.type]
            names.update(family.name + suffix for suffix in suffixes)
    names.update(r["record"] for g in build_rule_groups(parse_manifest(example("digits-demo"))) for r in g["rules"]
                 if "record" in r)
    return names


def test_dashboard_queries_are_valid_promql_over_metrics_we_export(tmp_path):
    dash = json.loads(DASHBOARD.read_text())
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("requests", "rejections", "latency", "confidence", "ε", "robust accuracy"):
        assert topic in titles, topic
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    concrete = [e.replace("$__rate_interval", "5m").replace("$namespace", "ml").replace("$model", "digits-demo")
                for e in exprs]
    rules = tmp_path / "dashboard-rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr{i}", "expr": e} for i, e in enumerate(concrete)]}]}))
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: run ./scripts/setup"
    out = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    known = _exported_metric_names()
    functions = {"sum", "by", "rate", "histogram_quantile", "min", "max", "increase", "le", "component", "service",
                 "outcome", "reason", "scope", "name", "namespace", "and", "clamp_min", "mode"}
    for e in concrete:
        body = re.sub(r'"[^"]*"', "", e)
        body = re.sub(r"\[[^\]]*\]", "", body)
        for ident in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", body):
            if ident in functions or ident in ("e",):
                continue
            assert ident in known, f"dashboard uses {ident}, which nothing exports"


def test_the_chart_ships_the_dashboard():
    cm = next(o for o in render() if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard"))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["hardened-model.json"]) == json.loads(DASHBOARD.read_text())


# ------------------------------------------------------------------ checkov
CHECKOV = ROOT / ".venv-checkov/bin/checkov"


@pytest.mark.skipif(not CHECKOV.exists(), reason="checkov missing: run ./scripts/setup")
def test_checkov_finds_nothing_unjustified(tmp_path):
    """checkov over the chart as installed (helm template in its namespace, every optional object on) and over
    every object the operator renders for each example, in a namespace as a user would apply them."""
    from hardened_operator.manifests.render import build_all
    from hardened_model.spec import parse_manifest
    from helpers import example

    (tmp_path / "chart.yaml").write_text(yaml.safe_dump_all(render("metrics.serviceMonitor.enabled=true",
                                                                   crds=True), sort_keys=False))
    (tmp_path / "chart-ha.yaml").write_text(yaml.safe_dump_all(render("replicas=2"), sort_keys=False))
    for path in EXAMPLES:
        doc = example(path.stem)
        doc["metadata"].setdefault("namespace", "ml")
        objs = build_all(parse_manifest(doc), digest="ab" * 32)
        (tmp_path / f"{path.stem}.yaml").write_text(yaml.safe_dump_all(objs, sort_keys=False))
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}
    out = subprocess.run([str(CHECKOV), "-d", str(tmp_path), "--framework", "kubernetes", "--skip-download",
                          "--compact", "-o", "json"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode in (0, 1), out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["summary"]["passed"] > 300 and report["summary"]["parsing_errors"] == 0
    scanned = {c["file_path"].lstrip("/") for c in report["results"]["passed_checks"]}
    assert scanned == {"chart.yaml", "chart-ha.yaml"} | {f"{p.stem}.yaml" for p in EXAMPLES}
    justified = yaml.safe_load((ROOT / "charts/checkov-justifications.yaml").read_text())
    unjustified, used = [], set()
    for check in report["results"]["failed_checks"]:
        entry = justified.get(check["check_id"])
        if entry and any(re.search(rx, check["resource"]) for rx in entry["resources"]):
            used.add(check["check_id"])
        else:
            unjustified.append(f"{check['check_id']} {check['check_name']}: {check['resource']}")
    assert not unjustified, "failed checks without a justification:\n" + "\n".join(unjustified)
    assert not set(justified) - used, f"justifications for checks that pass now: {sorted(set(justified) - used)}"
    assert all(len(e["reason"]) > 80 for e in justified.values())
