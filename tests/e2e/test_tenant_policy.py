"""A tenant against the platform's HardenedModelPolicy, on the real apiserver with real RBAC (issue 27).

The tenant is a ServiceAccount holding only the hardenedmodels verbs in its own namespace, as a platform team
would hand out; every request below is made as it (kubectl --as). The apiserver alone is needed: the chart's
CRDs and its ValidatingAdmissionPolicy and binding (`helm template`) are applied, no operator runs, so a
HardenedModel that is admitted is stored and nothing acts on it.

Each kind of violation is refused at `kubectl apply` with exactly the line `hardened-model validate --policy`
prints (hardened_model.policy.violations); a compliant spec is admitted; a namespace the policy does not select
admits the breaking spec, as it would with no policy; the tenant can neither loosen the policy, nor remove the
admission policy, nor relabel its namespace out of the selector, nor read Secrets.
"""
import re
import time

import pytest
import yaml

from cluster import CHART, Cluster, helm, wait, wait_for_admission
from hardened_model.policy import parse_policy, violations
from hardened_model.signing import generate_key_pem
from hardened_model.spec import parse_manifest
from helpers import example, merge_patch

NS_A, NS_B = "e2e-tenant-a", "e2e-tenant-b"
DUMP_NAMESPACES = [NS_A, NS_B]
RELEASE = "e2e-tenant"
VAP = f"{RELEASE}-hardened-model-operator"  # the admission policy's and its binding's name
CHART_VAP = "hardened-model-operator"  # the same objects of the chart the suite installs (cluster.install_operator)
SA = "ml-tenant"
POLICY = "e2e-tenant-a"

POLICY_SPEC = {
    "namespaceSelector": {"matchLabels": {"tenant": "a"}},
    "gates": {"minCleanAccuracy": 0.8, "minRobustAccuracy": 0.3, "maxEpsilon": 8},
    "signing": {"requireEnforce": True, "requireProvenance": True, "requireDataDigest": True},
    "images": {"trainer": ["ghcr.io/hardened-model/"], "server": ["ghcr.io/hardened-model/server"]},
    "serviceAccounts": ["ml-reader"],
    # the platform's key: a model signed with any other never verifies (tests/server/test_verify_policy_keys.py)
    "trust": {"publicKeys": [generate_key_pem()[1]]},
}
# digits-demo, made to meet the policy
COMPLIANT = {"data": {"sha256": "c" * 64}, "signing": {"provenance": {"required": True}},
             "aws": {"serviceAccountName": "ml-reader"}}
# one rule broken each (a patch over COMPLIANT), and the line the apiserver must print for it
BREAKING = {
    "gate-floor": ({"gates": {"minCleanAccuracy": 0.5}},
                   "spec.gates.minCleanAccuracy: 0.5 is below the policy's floor 0.8"),
    "gate-ceiling": ({"gates": {"maxEpsilon": 10.0}}, "spec.gates.maxEpsilon: 10 is above the policy's ceiling 8"),
    "gate-unset": ({"gates": {"minRobustAccuracy": None}},
                   "spec.gates.minRobustAccuracy: not set; the policy requires at least 0.3"),
    "warn": ({"signing": {"mode": "Warn"}}, 'spec.signing.mode: "Warn"; the policy requires "Enforce"'),
    "provenance": ({"signing": {"provenance": None}},
                   "spec.signing.provenance.required: false; the policy requires true"),
    "data-digest": ({"data": {"sha256": None}},
                    "spec.data.sha256: not set; the policy requires the training data pinned"),
    "trainer-image": ({"training": {"image": "docker.io/evil/trainer:1"}},
                      'spec.training.image: "docker.io/evil/trainer:1" matches none of the policy\'s trainer images '
                      '["ghcr.io/hardened-model/"]'),
    "server-image": ({"serving": {"image": "ghcr.io/hardened-model/server-x:1"}},
                     'spec.serving.image: "ghcr.io/hardened-model/server-x:1" matches none of the policy\'s server '
                     'images ["ghcr.io/hardened-model/server"]'),
    "service-account": ({"aws": {"serviceAccountName": "ml-admin"}},
                        'spec.aws.serviceAccountName: "ml-admin" is not among the policy\'s service accounts '
                        '["ml-reader"]'),
    "trust-generated-key": ({"signing": {"privateKeySecret": None, "publicKeySecret": None}},
                            "spec.signing.privateKeySecret: not set; a key pair made for the model would not verify "
                            "with the policy's trust.publicKeys: name the Secret with the platform's signing key"),
    "trust-keyless": ({"signing": {"method": "keyless", "privateKeySecret": None, "publicKeySecret": None,
                                   "keyless": {"identity": "me@example.com", "oidcIssuer": "https://issuer.example"}}},
                      'spec.signing.method: "keyless"; the policy trusts its public keys only (trust.publicKeys)'),
}
PARAM_SYNC_S = 120  # a VAP whose paramKind CRD is new refuses everything until its informer syncs


def model(*patches: dict, name: str = "digits-demo", namespace: str = NS_A) -> dict:
    doc = example("digits-demo")
    doc["metadata"].update(name=name, namespace=namespace)
    for patch in (COMPLIANT, *patches):
        doc["spec"] = merge_patch(doc["spec"], patch)
    return doc


def policy_doc() -> dict:
    return {"apiVersion": "hardened.dev/v1alpha1", "kind": "HardenedModelPolicy", "metadata": {"name": POLICY},
            "spec": POLICY_SPEC}


def as_tenant(cluster: Cluster, namespace: str, *args: str, input: str | None = None):
    return cluster.kubectl(f"--as=system:serviceaccount:{namespace}:{SA}", f"-n={namespace}", *args, input=input,
                           check=False)


def refusal(stderr: str) -> str | None:
    """The line after the apiserver's 'denied request: '."""
    m = re.search(r"denied request: (.*)$", stderr, re.M)
    return m.group(1).strip() if m else None


def tenant_objects(namespace: str) -> list[dict]:
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SA, "namespace": namespace}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "hardenedmodels-editor", "namespace": namespace},
         "rules": [{"apiGroups": ["hardened.dev"], "resources": ["hardenedmodels"],
                    "verbs": ["create", "get", "list", "update", "patch", "delete"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "hardenedmodels-editor", "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "hardenedmodels-editor"},
         "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": namespace}]},
    ]


@pytest.fixture(scope="module")
def tenant(cluster: Cluster):
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    for crd in ("hardenedmodels.hardened.dev", "hardenedmodelpolicies.hardened.dev"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    admission = helm(cluster, "template", RELEASE, str(CHART), "--show-only", "templates/admission-policy.yaml").stdout
    assert {d["metadata"]["name"] for d in yaml.safe_load_all(admission) if d} == {VAP}
    cluster.kubectl("apply", "-f", "-", input=admission)
    cluster.namespace(NS_A, tenant="a")
    cluster.namespace(NS_B, tenant="b")
    t0 = time.monotonic()
    wait_for_admission(cluster, NS_B, timeout=PARAM_SYNC_S)
    print(f"e2e: the admission policy answered after {time.monotonic() - t0:.1f}s")
    for ns in (NS_A, NS_B):
        cluster.apply(*tenant_objects(ns))
        cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "platform-signing", "namespace": ns},
                       "stringData": {"public.pem": "not a key, only a Secret to try to read"}})
    cluster.apply(policy_doc())
    # the policy is in force once a breaking spec is refused with its line and a compliant one is admitted
    # (both fail with "failed to find resource referenced by paramKind" until the param informer syncs)
    probe = yaml.safe_dump(model(BREAKING["warn"][0]))
    wait(lambda: refusal(cluster.kubectl("create", "--dry-run=server", "-f", "-", input=probe,
                                         check=False).stderr) == f"HardenedModelPolicy {POLICY}: {BREAKING['warn'][1]}",
         PARAM_SYNC_S, "the admission policy to enforce the HardenedModelPolicy", interval=2)
    ok = yaml.safe_dump(model({}))
    wait(lambda: cluster.kubectl("create", "--dry-run=server", "-f", "-", input=ok, check=False).returncode == 0,
         PARAM_SYNC_S, "the admission policy to admit a compliant spec", interval=2)
    yield cluster
    cluster.kubectl("delete", "hardenedmodelpolicy", POLICY, "--ignore-not-found", check=False)
    for ns in (NS_A, NS_B):
        cluster.kubectl("delete", "hardenedmodels", "--all", f"-n={ns}", "--wait=false", check=False)
        cluster.delete_namespace(ns)
    cluster.kubectl("delete", "validatingadmissionpolicybinding", VAP, "--ignore-not-found", check=False)
    cluster.kubectl("delete", "validatingadmissionpolicy", VAP, "--ignore-not-found", check=False)


def test_the_admission_policy_type_checks_against_the_policy_crd(tenant):
    """The apiserver compiled every expression (a compile error would refuse every model) and found no
    type warnings against the HardenedModelPolicy and HardenedModel schemas."""
    def checked():
        vap = tenant.get("validatingadmissionpolicy", VAP)
        return vap if (vap.get("status") or {}).get("observedGeneration") == vap["metadata"]["generation"] else None

    vap = wait(checked, 60, "the admission policy's type check")
    assert not (vap["status"].get("typeChecking") or {}).get("expressionWarnings"), vap["status"]


@pytest.mark.parametrize("case", BREAKING)
def test_a_tenant_is_refused_each_violation_with_the_line_validate_prints(tenant, case):
    patch, line = BREAKING[case]
    doc = model(patch, name=f"bad-{case}")
    out = as_tenant(tenant, NS_A, "apply", "-f", "-", input=yaml.safe_dump(doc))
    assert out.returncode != 0, f"admitted: {out.stdout}"
    expected = [str(v) for v in violations(parse_manifest(doc), [parse_policy(policy_doc())],
                                           {"kubernetes.io/metadata.name": NS_A, "tenant": "a"})]
    assert expected[0] == f"HardenedModelPolicy {POLICY}: {line}"  # the offline check says the same
    assert refusal(out.stderr) == expected[0], out.stderr
    # this module's admission policy, or the chart's own when the suite installed the operator before it
    # (tests/e2e/conftest.py): both evaluate every HardenedModelPolicy, and the apiserver names whichever
    # refused first
    said = re.search(rf'"bad-{case}" is forbidden: ValidatingAdmissionPolicy \'([^\']+)\' with binding \'([^\']+)\' '
                     'denied request: ', out.stderr)
    assert said and said[1] == said[2] and said[1] in (VAP, CHART_VAP), out.stderr
    assert out.stderr.startswith("Error from server (Forbidden)"), out.stderr
    assert tenant.get("hardenedmodel", f"bad-{case}", NS_A) is None


def test_a_compliant_spec_is_admitted_and_its_spec_is_checked_again_on_update(tenant):
    doc = model({}, name="good")
    out = as_tenant(tenant, NS_A, "apply", "-f", "-", input=yaml.safe_dump(doc))
    assert out.returncode == 0, out.stderr
    warn = model(BREAKING["warn"][0], name="good")
    out = as_tenant(tenant, NS_A, "apply", "-f", "-", input=yaml.safe_dump(warn))
    assert refusal(out.stderr) == f"HardenedModelPolicy {POLICY}: {BREAKING['warn'][1]}", out.stderr
    assert tenant.get("hardenedmodel", "good", NS_A)["spec"]["signing"]["mode"] == "Enforce"
    # what leaves the spec alone (labels, annotations, finalizers, status) is not the policy's business
    out = as_tenant(tenant, NS_A, "label", "hardenedmodel", "good", "team=vision")
    assert out.returncode == 0, out.stderr
    out = as_tenant(tenant, NS_A, "delete", "hardenedmodel", "good")
    assert out.returncode == 0, out.stderr


def test_a_model_admitted_before_the_policy_tightened_takes_metadata_writes(tenant):
    """The operator writes status and kopf's annotations, and removes its finalizer, on models a newer policy
    would refuse: those writes must pass (the operator itself refuses such a model at its next pass)."""
    six = {"gates": {"maxEpsilon": 6.0}, "training": {"privacy": {"targetEpsilon": 6.0}}}
    doc = model(six, name="older")
    assert as_tenant(tenant, NS_A, "apply", "-f", "-", input=yaml.safe_dump(doc)).returncode == 0
    tighter = merge_patch(policy_doc(), {"metadata": {"name": f"{POLICY}-tighter"},
                                         "spec": {"gates": {"maxEpsilon": 3}}})
    tenant.apply(tighter)
    try:
        line = f"HardenedModelPolicy {POLICY}-tighter: spec.gates.maxEpsilon: 6 is above the policy's ceiling 3"
        respec = yaml.safe_dump(model(six, {"training": {"epochs": 21}}, name="older"))
        wait(lambda: refusal(as_tenant(tenant, NS_A, "apply", "-f", "-", input=respec).stderr) == line,
             PARAM_SYNC_S, "the tighter policy to be in force", interval=2)
        # as the operator would (check=True: each must pass)
        tenant.kubectl("annotate", "hardenedmodel", "older", f"-n={NS_A}", "kopf.zalando.org/touch=1")
        tenant.kubectl("patch", "hardenedmodel", "older", f"-n={NS_A}", "--type=merge", "-p",
                       '{"metadata":{"finalizers":["kopf.zalando.org/KopfFinalizerMarker"]}}')
        tenant.kubectl("patch", "hardenedmodel", "older", f"-n={NS_A}", "--type=merge", "-p",
                       '{"metadata":{"finalizers":null}}')
        assert as_tenant(tenant, NS_A, "delete", "hardenedmodel", "older").returncode == 0
    finally:
        tenant.kubectl("delete", "hardenedmodelpolicy", f"{POLICY}-tighter", "--ignore-not-found", check=False)


def test_a_namespace_the_policy_does_not_select_admits_the_breaking_spec(tenant):
    everything = [patch for patch, _ in BREAKING.values()]
    doc = model(*everything, name="free", namespace=NS_B)
    assert violations(parse_manifest(doc), [parse_policy(policy_doc())],
                      {"kubernetes.io/metadata.name": NS_B, "tenant": "b"}) == []
    out = as_tenant(tenant, NS_B, "apply", "-f", "-", input=yaml.safe_dump(doc))
    assert out.returncode == 0, out.stderr
    assert as_tenant(tenant, NS_B, "delete", "hardenedmodel", "free").returncode == 0
    # and the same spec in the selected namespace names the first rule it breaks
    out = as_tenant(tenant, NS_A, "apply", "-f", "-", input=yaml.safe_dump(model(*everything, name="free")))
    assert refusal(out.stderr) == f"HardenedModelPolicy {POLICY}: {BREAKING['gate-floor'][1]}", out.stderr


def _forbidden(out, verb: str, resource: str) -> bool:
    """Refused by RBAC: for ``verb`` itself, or for the get kubectl makes first (patch, label)."""
    return out.returncode != 0 and any(f'cannot {v} resource "{resource}"' in out.stderr for v in (verb, "get"))


def _can(cluster: Cluster, namespace: str, verb: str, resource: str) -> bool:
    out = as_tenant(cluster, namespace, "auth", "can-i", verb, resource)
    return out.stdout.strip() == "yes"


def test_the_tenant_can_neither_loosen_nor_remove_the_policy(tenant):
    loose = yaml.safe_dump(merge_patch(policy_doc(), {"metadata": {"name": "tenant-own"}, "spec": {
        "namespaceSelector": {"matchLabels": {"tenant": "nobody"}}}}))
    assert _forbidden(as_tenant(tenant, NS_A, "create", "-f", "-", input=loose), "create", "hardenedmodelpolicies")
    assert _forbidden(as_tenant(tenant, NS_A, "patch", "hardenedmodelpolicy", POLICY, "--type=merge", "-p",
                                '{"spec":{"gates":null}}'), "patch", "hardenedmodelpolicies")
    stored = tenant.get("hardenedmodelpolicy", POLICY)
    assert _forbidden(as_tenant(tenant, NS_A, "replace", "-f", "-", input=yaml.safe_dump(stored)), "update",
                      "hardenedmodelpolicies")
    assert _forbidden(as_tenant(tenant, NS_A, "delete", "hardenedmodelpolicy", POLICY), "delete",
                      "hardenedmodelpolicies")
    assert _forbidden(as_tenant(tenant, NS_A, "delete", "validatingadmissionpolicybinding", VAP), "delete",
                      "validatingadmissionpolicybindings")
    # nor opt its namespace out of the selector
    assert _forbidden(as_tenant(tenant, NS_A, "patch", "namespace", NS_A, "--type=merge", "-p",
                                '{"metadata":{"labels":{"tenant":null}}}'), "patch", "namespaces")
    assert tenant.get("hardenedmodelpolicy", POLICY)["spec"] == stored["spec"]
    for verb in ("create", "update", "patch", "delete", "deletecollection"):  # RBAC's own answer, verb by verb
        assert not _can(tenant, NS_A, verb, "hardenedmodelpolicies.hardened.dev"), verb
        assert not _can(tenant, NS_A, verb, "validatingadmissionpolicies.admissionregistration.k8s.io"), verb
        assert not _can(tenant, NS_A, verb, "validatingadmissionpolicybindings.admissionregistration.k8s.io"), verb
    assert not _can(tenant, NS_A, "patch", "namespaces")
    assert _can(tenant, NS_A, "create", "hardenedmodels.hardened.dev")  # the rights it was given, and only those


def test_the_tenant_cannot_read_secrets(tenant):
    assert _forbidden(as_tenant(tenant, NS_A, "get", "secret", "platform-signing"), "get", "secrets")
    assert _forbidden(as_tenant(tenant, NS_A, "get", "secrets"), "list", "secrets")
    assert _forbidden(as_tenant(tenant, NS_A, "get", "secret", "platform-signing", f"-n={NS_B}"), "get", "secrets")
    for verb in ("get", "list", "watch"):
        assert not _can(tenant, NS_A, verb, "secrets"), verb
