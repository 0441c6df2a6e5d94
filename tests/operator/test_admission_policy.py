"""The chart's ValidatingAdmissionPolicy says what `hardened-model validate --policy` says (issue 27).

The expressions are taken from the chart as the real helm renders it and evaluated with cel-python, the
engine hardened_model.spec already checks the CRD's rules with, following the apiserver's order: the
matchConditions, then the variables, then the validations, and the first that fails names the refusal (the
apiserver reports only that one). For each case the refusal must be the first line of
``hardened_model.policy.violations`` for that one policy, or none when it finds none. The real apiserver
judges the same expressions in tests/e2e/test_tenant_policy.py.

Two functions that Kubernetes' CEL environment has and cel-python lacks are given to it here, with the
semantics of the Kubernetes libraries: ``find`` (k8s regex library: the first match, '' for none) and
``join`` (cel-go strings extension).
"""
from __future__ import annotations

import copy
import functools
import re

import celpy
import pytest
from celpy import celtypes
from hypothesis import given, settings
from hypothesis import strategies as st

from chart_support import render
from hardened_model.policy import GateBounds, parse_policy, violations
from hardened_model.provenance import image_allowed
from hardened_model.signing import generate_key_pem
from hardened_model.spec import parse_manifest, to_wire
from helpers import example, merge_patch

NS = "team-a"


def _find(text, pattern):
    match = re.search(str(pattern), str(text))
    return celtypes.StringType(match.group(0) if match else "")


def _join(items, sep=""):
    return celtypes.StringType(str(sep).join(str(i) for i in items))


_ENV = celpy.Environment()


@functools.cache
def _program(expr: str):
    return _ENV.program(_ENV.compile(expr), functions={"find": _find, "join": _join})


def _eval(expr: str, activation: dict):
    out = _program(expr).evaluate(activation)
    if isinstance(out, celpy.CELEvalError):  # the apiserver would refuse (failurePolicy Fail): a bug here
        raise AssertionError(f"{expr}: {out!r}")
    return out


def _vap(*sets: str) -> dict | None:
    return next((o for o in render(*sets) if o["kind"] == "ValidatingAdmissionPolicy"), None)


@pytest.fixture(scope="module")
def vap() -> dict:
    return _vap()


def admit(vap: dict, *, params: dict, labels: dict, obj: dict, old: dict | None = None,
          operation: str = "CREATE") -> str | None:
    """The message the apiserver refuses ``obj`` with under one HardenedModelPolicy (``params``), or None."""
    act = {name: celpy.json_to_cel(value) for name, value in {
        "object": obj, "oldObject": old, "params": params, "request": {"operation": operation},
        "namespaceObject": {"metadata": {"name": NS, "labels": labels}}}.items()}
    spec = vap["spec"]
    if not all(bool(_eval(c["expression"], act)) for c in spec.get("matchConditions", [])):
        return None
    variables = act["variables"] = celtypes.MapType({})
    for v in spec.get("variables", []):
        variables[celtypes.StringType(v["name"])] = _eval(v["expression"], act)
    for rule in spec["validations"]:
        if not bool(_eval(rule["expression"], act)):
            return str(_eval(rule["messageExpression"], act))
    return None


def _model(base: str, patch: dict) -> dict:
    doc = example(base)
    doc["metadata"]["namespace"] = NS
    doc["spec"] = merge_patch(doc["spec"], patch)
    return doc


def _policy(spec: dict, name: str = "platform") -> dict:
    return {"apiVersion": "hardened.dev/v1alpha1", "kind": "HardenedModelPolicy", "metadata": {"name": name},
            "spec": spec}


PEM = generate_key_pem()[1]
IDENTITY = {"identity": "trainer@ml.example.com", "oidcIssuer": "https://token.actions.githubusercontent.com"}
KEYLESS = {"signing": {"method": "keyless", "keyless": IDENTITY, "privateKeySecret": None, "publicKeySecret": None}}
GENERATED = {"signing": {"privateKeySecret": None, "publicKeySecret": None}}  # a key pair made for the model
EPHEMERAL = {"signing": {"method": "ephemeral", "privateKeySecret": None, "publicKeySecret": None}}
PER_RUN = {"ephemeralKeys": True}
D = "sha256:" + "a" * 64
E = "sha256:" + "b" * 64
TRAINER = "ghcr.io/hardened-model/trainer"
# (id, policy spec, namespace labels, base example, spec patch, the field refused or None)
CASES = [
    # gates: floors and ceilings, equal passes, unset gates, numbers printed as the apiserver prints them
    ("clean-below-floor", {"gates": {"minCleanAccuracy": 0.9}}, {}, "digits-demo", {}, "spec.gates.minCleanAccuracy"),
    ("clean-at-floor", {"gates": {"minCleanAccuracy": 0.8}}, {}, "digits-demo", {}, None),
    ("clean-floor-1", {"gates": {"minCleanAccuracy": 1}}, {}, "digits-demo", {}, "spec.gates.minCleanAccuracy"),
    ("clean-default-0", {"gates": {"minCleanAccuracy": 0.5}}, {}, "digits-demo", {"gates": {"minCleanAccuracy": None}},
     "spec.gates.minCleanAccuracy"),
    ("robust-below", {"gates": {"minRobustAccuracy": 0.45}}, {}, "digits-demo", {}, "spec.gates.minRobustAccuracy"),
    ("robust-unset", {"gates": {"minRobustAccuracy": 0.2}}, {}, "digits-demo", {"gates": {"minRobustAccuracy": None}},
     "spec.gates.minRobustAccuracy"),
    ("epsilon-above", {"gates": {"maxEpsilon": 3}}, {}, "digits-demo", {}, "spec.gates.maxEpsilon"),
    ("epsilon-above-fraction", {"gates": {"maxEpsilon": 2.5}}, {}, "digits-demo", {"gates": {"maxEpsilon": 8.25}},
     "spec.gates.maxEpsilon"),
    ("epsilon-tiny", {"gates": {"maxEpsilon": 0.00001}}, {}, "digits-demo", {}, "spec.gates.maxEpsilon"),
    ("epsilon-at-ceiling", {"gates": {"maxEpsilon": 8}}, {}, "digits-demo", {}, None),
    ("epsilon-unset", {"gates": {"maxEpsilon": 3}}, {}, "digits-demo",
     {"gates": {"maxEpsilon": None}, "training": {"privacy": {"enabled": False}}}, "spec.gates.maxEpsilon"),
    ("auc-above", {"gates": {"maxMembershipAUC": 0.55}}, {}, "digits-demo", {}, "spec.gates.maxMembershipAUC"),
    ("auc-unset", {"gates": {"maxMembershipAUC": 0.55}}, {}, "digits-demo", {"gates": {"maxMembershipAUC": None}},
     "spec.gates.maxMembershipAUC"),
    ("recall-below", {"gates": {"minRecall": 0.75}}, {}, "fraud-tabular", {}, "spec.gates.minRecall"),
    ("recall-unset", {"gates": {"minRecall": 0.75}}, {}, "digits-demo", {}, "spec.gates.minRecall"),
    ("precision-unset", {"gates": {"minPrecision": 0.6}}, {}, "fraud-tabular", {}, "spec.gates.minPrecision"),
    ("prauc-below", {"gates": {"minPRAUC": 0.35}}, {}, "fraud-tabular", {}, "spec.gates.minPRAUC"),
    ("balanced-unset", {"gates": {"minBalancedAccuracy": 0.7}}, {}, "fraud-tabular", {},
     "spec.gates.minBalancedAccuracy"),
    ("robust-recall-below", {"gates": {"minRobustRecall": 0.4}}, {}, "fraud-tabular", {}, "spec.gates.minRobustRecall"),
    ("tabular-meets-all", {"gates": {"minRecall": 0.5, "minPRAUC": 0.3, "minRobustRecall": 0.25, "maxEpsilon": 3}},
     {}, "fraud-tabular", {}, None),
    # signing
    ("warn", {"signing": {"requireEnforce": True}}, {}, "digits-demo", {"signing": {"mode": "Warn"}},
     "spec.signing.mode"),
    ("enforce", {"signing": {"requireEnforce": True}}, {}, "digits-demo", {}, None),
    ("warn-allowed", {"signing": {"requireEnforce": False}}, {}, "digits-demo", {"signing": {"mode": "Warn"}}, None),
    ("no-provenance", {"signing": {"requireProvenance": True}}, {}, "digits-demo", {},
     "spec.signing.provenance.required"),
    ("provenance-false", {"signing": {"requireProvenance": True}}, {}, "digits-demo",
     {"signing": {"provenance": {"required": False}}}, "spec.signing.provenance.required"),
    ("provenance-required", {"signing": {"requireProvenance": True}}, {}, "digits-demo",
     {"signing": {"provenance": {"required": True}}}, None),
    ("provenance-by-images", {"signing": {"requireProvenance": True}}, {}, "digits-demo",
     {"signing": {"provenance": {"allowedTrainerImages": [TRAINER]}}}, None),
    ("provenance-by-digest", {"signing": {"requireProvenance": True}}, {}, "digits-demo",
     {"signing": {"provenance": {"requireDataDigest": True}}}, None),
    ("data-unpinned", {"signing": {"requireDataDigest": True}}, {}, "digits-demo", {}, "spec.data.sha256"),
    ("data-pinned", {"signing": {"requireDataDigest": True}}, {}, "digits-demo", {"data": {"sha256": "c" * 64}}, None),
    # images: every form of provenance.image_allowed
    ("trainer-repo", {"images": {"trainer": [TRAINER]}}, {}, "digits-demo", {}, None),
    ("trainer-prefix", {"images": {"trainer": ["ghcr.io/hardened-model/"]}}, {}, "digits-demo", {}, None),
    ("trainer-prefix-other", {"images": {"trainer": ["ghcr.io/platform/", "registry.internal/ml/trainer"]}}, {},
     "digits-demo", {}, "spec.training.image"),
    ("trainer-prefix-no-slash", {"images": {"trainer": ["ghcr.io/hardened-model"]}}, {}, "digits-demo", {},
     "spec.training.image"),
    ("trainer-dot-is-no-wildcard", {"images": {"trainer": ["ghcrxio/hardened-model/trainer"]}}, {}, "digits-demo", {},
     "spec.training.image"),
    ("trainer-digest", {"images": {"trainer": [D]}}, {}, "digits-demo", {"training": {"image": f"{TRAINER}@{D}"}},
     None),
    ("trainer-digest-other", {"images": {"trainer": [E]}}, {}, "digits-demo", {"training": {"image": f"{TRAINER}@{D}"}},
     "spec.training.image"),
    ("trainer-digest-of-tag", {"images": {"trainer": [D]}}, {}, "digits-demo", {}, "spec.training.image"),
    ("trainer-repo-digest", {"images": {"trainer": [f"{TRAINER}@{D}"]}}, {}, "digits-demo",
     {"training": {"image": f"{TRAINER}:0.2@{D}"}}, None),
    ("trainer-repo-digest-other-repo", {"images": {"trainer": [f"ghcr.io/evil/trainer@{D}"]}}, {}, "digits-demo",
     {"training": {"image": f"{TRAINER}@{D}"}}, "spec.training.image"),
    ("trainer-registry-port", {"images": {"trainer": ["localhost:5000/trainer"]}}, {}, "digits-demo",
     {"training": {"image": "localhost:5000/trainer:1"}}, None),
    ("server-other", {"images": {"server": ["ghcr.io/platform/server"]}}, {}, "digits-demo", {}, "spec.serving.image"),
    ("server-allowed", {"images": {"server": ["ghcr.io/hardened-model/server@" + D, "ghcr.io/hardened-model/"]}}, {},
     "digits-demo", {}, None),
    # service accounts
    ("sa-not-listed", {"serviceAccounts": ["ml-reader", "ml-batch"]}, {}, "digits-demo",
     {"aws": {"serviceAccountName": "ml-admin"}}, "spec.aws.serviceAccountName"),
    ("sa-listed", {"serviceAccounts": ["ml-reader"]}, {}, "digits-demo", {"aws": {"serviceAccountName": "ml-reader"}},
     None),
    ("sa-none-allowed", {"serviceAccounts": []}, {}, "eks-s3-irsa", {}, "spec.aws.serviceAccountName"),
    ("sa-unset", {"serviceAccounts": []}, {}, "digits-demo", {}, None),
    # namespace selection: only a selected namespace is refused
    ("labels-match", {"namespaceSelector": {"matchLabels": {"tenant": "a"}}, "signing": {"requireEnforce": True}},
     {"tenant": "a"}, "digits-demo", {"signing": {"mode": "Warn"}}, "spec.signing.mode"),
    ("labels-other", {"namespaceSelector": {"matchLabels": {"tenant": "a"}}, "signing": {"requireEnforce": True}},
     {"tenant": "b"}, "digits-demo", {"signing": {"mode": "Warn"}}, None),
    ("labels-absent", {"namespaceSelector": {"matchLabels": {"tenant": "a"}}, "signing": {"requireEnforce": True}},
     {}, "digits-demo", {"signing": {"mode": "Warn"}}, None),
    ("selector-empty", {"namespaceSelector": {}, "gates": {"maxEpsilon": 3}}, {"x": "y"}, "digits-demo", {},
     "spec.gates.maxEpsilon"),
    ("in", {"namespaceSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["prod", "stage"]}]},
            "gates": {"maxEpsilon": 3}}, {"tier": "stage"}, "digits-demo", {}, "spec.gates.maxEpsilon"),
    ("in-other", {"namespaceSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["prod"]}]},
                  "gates": {"maxEpsilon": 3}}, {"tier": "dev"}, "digits-demo", {}, None),
    ("in-absent", {"namespaceSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["prod"]}]},
                   "gates": {"maxEpsilon": 3}}, {}, "digits-demo", {}, None),
    ("notin-absent", {"namespaceSelector": {"matchExpressions": [{"key": "tier", "operator": "NotIn",
                                                                   "values": ["dev"]}]},
                      "gates": {"maxEpsilon": 3}}, {}, "digits-demo", {}, "spec.gates.maxEpsilon"),
    ("notin-listed", {"namespaceSelector": {"matchExpressions": [{"key": "tier", "operator": "NotIn",
                                                                   "values": ["dev"]}]},
                      "gates": {"maxEpsilon": 3}}, {"tier": "dev"}, "digits-demo", {}, None),
    ("exists", {"namespaceSelector": {"matchExpressions": [{"key": "tenant", "operator": "Exists"}]},
                "gates": {"maxEpsilon": 3}}, {"tenant": ""}, "digits-demo", {}, "spec.gates.maxEpsilon"),
    ("exists-absent", {"namespaceSelector": {"matchExpressions": [{"key": "tenant", "operator": "Exists"}]},
                       "gates": {"maxEpsilon": 3}}, {}, "digits-demo", {}, None),
    ("doesnotexist", {"namespaceSelector": {"matchExpressions": [{"key": "exempt", "operator": "DoesNotExist"}]},
                      "gates": {"maxEpsilon": 3}}, {"tenant": "a"}, "digits-demo", {}, "spec.gates.maxEpsilon"),
    ("doesnotexist-present", {"namespaceSelector": {"matchExpressions": [{"key": "exempt",
                                                                           "operator": "DoesNotExist"}]},
                              "gates": {"maxEpsilon": 3}}, {"exempt": "true"}, "digits-demo", {}, None),
    ("labels-and-expressions", {"namespaceSelector": {"matchLabels": {"tenant": "a"}, "matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["prod"]}]}, "gates": {"maxEpsilon": 3}},
     {"tenant": "a", "tier": "dev"}, "digits-demo", {}, None),
    # several rules broken: the first in field order is the one reported
    ("first-of-many", {"gates": {"maxEpsilon": 2, "minRobustAccuracy": 0.6}, "signing": {"requireEnforce": True},
                       "images": {"trainer": ["ghcr.io/platform/"]}, "serviceAccounts": []},
     {}, "eks-s3-irsa", {"signing": {"mode": "Warn"}}, "spec.gates.minRobustAccuracy"),
    ("all-but-account", {"signing": {"requireEnforce": True, "requireProvenance": True},
                         "images": {"trainer": ["ghcr.io/platform/"], "server": ["ghcr.io/platform/"]},
                         "serviceAccounts": ["other"]},
     {}, "eks-s3-irsa", {"signing": {"provenance": {"required": True}}, "training": {
         "image": "ghcr.io/platform/trainer:1"}, "serving": {"image": "ghcr.io/platform/server:1"}},
     "spec.aws.serviceAccountName"),
    ("empty-policy", {}, {}, "digits-demo", {"signing": {"mode": "Warn"}}, None),
    # trust: the platform's keys or identities (policy._check_trust)
    ("trust-keys-own-secret", {"trust": {"publicKeys": [PEM]}}, {}, "digits-demo", {}, None),
    ("trust-keys-generated-pair", {"trust": {"publicKeys": [PEM]}}, {}, "digits-demo", GENERATED,
     "spec.signing.privateKeySecret"),
    ("trust-keys-keyless-model", {"trust": {"publicKeys": [PEM]}}, {}, "digits-demo", KEYLESS,
     "spec.signing.method"),
    ("trust-keyless-key-model", {"trust": {"keyless": [IDENTITY]}}, {}, "eks-s3-irsa", {}, "spec.signing.method"),
    ("trust-keyless-match", {"trust": {"keyless": [{"identity": "x@example.com", "oidcIssuer": "https://a"},
                                                   IDENTITY]}}, {}, "digits-demo", KEYLESS, None),
    ("trust-keyless-other-identity", {"trust": {"keyless": [{**IDENTITY, "identity": "other@example.com"}]}}, {},
     "digits-demo", KEYLESS, "spec.signing.keyless"),
    ("trust-keyless-other-issuer", {"trust": {"keyless": [{**IDENTITY, "oidcIssuer": "https://evil.example"}]}}, {},
     "digits-demo", KEYLESS, "spec.signing.keyless"),
    ("trust-keyless-swapped", {"trust": {"keyless": [{"identity": IDENTITY["identity"], "oidcIssuer": "https://a"},
                                                     {"identity": "x", "oidcIssuer": IDENTITY["oidcIssuer"]}]}}, {},
     "digits-demo", KEYLESS, "spec.signing.keyless"),
    ("trust-keyless-tenant-root", {"trust": {"keyless": [IDENTITY]}}, {}, "digits-demo",
     {"signing": {**KEYLESS["signing"], "keyless": {**IDENTITY, "trustConfig": {"kind": "ConfigMap", "name": "root",
                                                                                "key": "trust.json"}}}},
     "spec.signing.keyless.trustConfig"),
    ("trust-both-keyless-model", {"trust": {"publicKeys": [PEM], "keyless": [IDENTITY]}}, {}, "digits-demo", KEYLESS,
     None),
    ("trust-countersignature-only", {"trust": {"requireCountersignature": True}}, {}, "digits-demo", {}, None),
    # trust: per-run keys (signing.method ephemeral), alone and with the other roots
    ("trust-per-run-ephemeral-model", {"trust": PER_RUN}, {}, "digits-demo", EPHEMERAL, None),
    ("trust-per-run-false-ephemeral-model", {"trust": {"ephemeralKeys": False}}, {}, "digits-demo", EPHEMERAL, None),
    ("trust-per-run-false-keys-keyless-model", {"trust": {"publicKeys": [PEM], "ephemeralKeys": False}}, {},
     "digits-demo", KEYLESS, "spec.signing.method"),
    ("trust-no-root-ephemeral-model", {"trust": {"requireCountersignature": True}}, {}, "digits-demo", EPHEMERAL,
     None),
    ("trust-per-run-key-model", {"trust": PER_RUN}, {}, "digits-demo", {}, "spec.signing.method"),
    ("trust-per-run-keyless-model", {"trust": PER_RUN}, {}, "digits-demo", KEYLESS, "spec.signing.method"),
    ("trust-keys-ephemeral-model", {"trust": {"publicKeys": [PEM]}}, {}, "digits-demo", EPHEMERAL,
     "spec.signing.method"),
    ("trust-keyless-ephemeral-model", {"trust": {"keyless": [IDENTITY]}}, {}, "digits-demo", EPHEMERAL,
     "spec.signing.method"),
    ("trust-keys-keyless-ephemeral-model", {"trust": {"publicKeys": [PEM], "keyless": [IDENTITY]}}, {},
     "digits-demo", EPHEMERAL, "spec.signing.method"),
    ("trust-keys-per-run-keyless-model", {"trust": {"publicKeys": [PEM], **PER_RUN}}, {}, "digits-demo", KEYLESS,
     "spec.signing.method"),
    ("trust-keyless-per-run-key-model", {"trust": {"keyless": [IDENTITY], **PER_RUN}}, {}, "eks-s3-irsa", {},
     "spec.signing.method"),
    ("trust-keys-per-run-key-model", {"trust": {"publicKeys": [PEM], **PER_RUN}}, {}, "digits-demo", {}, None),
    ("trust-keys-per-run-ephemeral-model", {"trust": {"publicKeys": [PEM], **PER_RUN}}, {}, "digits-demo", EPHEMERAL,
     None),
    ("trust-keys-per-run-generated-pair", {"trust": {"publicKeys": [PEM], **PER_RUN}}, {}, "digits-demo", GENERATED,
     "spec.signing.privateKeySecret"),
    ("trust-keyless-per-run-other-identity", {"trust": {"keyless": [{**IDENTITY, "identity": "other@example.com"}],
                                                        **PER_RUN}}, {}, "digits-demo", KEYLESS,
     "spec.signing.keyless"),
    ("trust-all-roots-ephemeral-model", {"trust": {"publicKeys": [PEM], "keyless": [IDENTITY], **PER_RUN}}, {},
     "digits-demo", EPHEMERAL, None),
    ("trust-per-run-other-namespace", {"namespaceSelector": {"matchLabels": {"tenant": "a"}}, "trust": PER_RUN},
     {"tenant": "b"}, "digits-demo", {}, None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_the_admission_policy_refuses_with_the_first_line_of_violations(vap, case):
    _, rules, labels, base, patch, field = case
    labels = {"kubernetes.io/metadata.name": NS, **labels}  # the apiserver sets it on every namespace
    doc, policy_doc = _model(base, patch), _policy(rules)
    model, policy = parse_manifest(doc), parse_policy(policy_doc)
    expected = [str(v) for v in violations(model, [policy], labels)]
    obj = {**doc, "spec": to_wire(model.spec)}  # the model as the apiserver defaults it
    stored = {**policy_doc, "spec": to_wire(policy.spec)}  # the policy as the CRD defaults it
    for params in (stored, policy_doc):  # defaulted or not: every has() guard holds
        got = admit(vap, params=params, labels=labels, obj=obj)
        assert got == (expected[0] if expected else None)
    if field is None:
        assert expected == []
    else:
        assert expected and expected[0].startswith(f"HardenedModelPolicy platform: {field}: "), expected


def test_the_messages_read_as_the_shared_format(vap):
    """A few lines spelled out, so that a change of phrasing in both places at once is still noticed."""
    def message(rules, patch, base="digits-demo", labels=None):
        doc = _model(base, patch)
        policy = parse_policy(_policy(rules))
        return admit(vap, params={**_policy(rules), "spec": to_wire(policy.spec)}, labels=labels or {},
                     obj={**doc, "spec": to_wire(parse_manifest(doc).spec)})

    p = "HardenedModelPolicy platform: "
    assert message({"gates": {"minCleanAccuracy": 0.9}}, {"gates": {"minCleanAccuracy": 0.5}}) == \
        p + "spec.gates.minCleanAccuracy: 0.5 is below the policy's floor 0.9"
    assert message({"gates": {"maxEpsilon": 3}}, {}) == p + "spec.gates.maxEpsilon: 8 is above the policy's ceiling 3"
    assert message({"gates": {"minRecall": 0.5}}, {}) == \
        p + "spec.gates.minRecall: not set; the policy requires at least 0.5"
    assert message({"signing": {"requireEnforce": True}}, {"signing": {"mode": "Warn"}}) == \
        p + 'spec.signing.mode: "Warn"; the policy requires "Enforce"'
    assert message({"images": {"trainer": ["a.io/x/", "b.io/y"]}}, {}) == \
        p + 'spec.training.image: "ghcr.io/hardened-model/trainer:0.1.0" matches none of the policy\'s trainer ' \
            'images ["a.io/x/","b.io/y"]'
    assert message({"serviceAccounts": []}, {}, base="eks-s3-irsa") == \
        p + 'spec.aws.serviceAccountName: "hardened-model-irsa"; the policy allows none'
    assert message({"trust": {"publicKeys": [PEM]}}, KEYLESS) == \
        p + 'spec.signing.method: "keyless"; the policy trusts its public keys only (trust.publicKeys)'
    assert message({"trust": {"keyless": [IDENTITY]}}, {}) == \
        p + 'spec.signing.method: "key"; the policy trusts keyless identities only (trust.keyless)'
    assert message({"trust": PER_RUN}, {}) == \
        p + 'spec.signing.method: "key"; the policy trusts per-run keys only (trust.ephemeralKeys)'
    assert message({"trust": {"publicKeys": [PEM], "keyless": [IDENTITY]}}, EPHEMERAL) == \
        p + 'spec.signing.method: "ephemeral"; the policy trusts its public keys (trust.publicKeys) or keyless ' \
            'identities (trust.keyless) only'
    assert message({"trust": {"publicKeys": [PEM], **PER_RUN}}, KEYLESS) == \
        p + 'spec.signing.method: "keyless"; the policy trusts its public keys (trust.publicKeys) or per-run keys ' \
            '(trust.ephemeralKeys) only'


def test_an_update_is_checked_only_when_it_writes_the_spec(vap):
    """The operator's status writes, kopf's annotations and a finalizer's removal must pass for a model admitted
    before a policy tightened; a new spec is checked."""
    doc = _model("digits-demo", {})
    obj = {**doc, "spec": to_wire(parse_manifest(doc).spec)}
    params = _policy({"gates": {"maxEpsilon": 3}})
    relabelled = copy.deepcopy(obj)
    relabelled["metadata"]["annotations"] = {"kopf.zalando.org/last-handled-configuration": "{}"}
    assert admit(vap, params=params, labels={}, obj=relabelled, old=obj, operation="UPDATE") is None
    changed = copy.deepcopy(obj)
    changed["spec"]["training"]["epochs"] = 21
    assert admit(vap, params=params, labels={}, obj=changed, old=obj, operation="UPDATE") == \
        "HardenedModelPolicy platform: spec.gates.maxEpsilon: 8 is above the policy's ceiling 3"
    assert admit(vap, params=params, labels={}, obj=obj, operation="CREATE") is not None


def test_the_policy_checks_every_gate_in_the_order_of_gate_bounds(vap):
    fields = [re.search(r"spec\.gates\.(\w+): ", v["messageExpression"]) for v in vap["spec"]["validations"]]
    gates = [m.group(1) for m in fields if m]
    assert gates == [info.alias or _camel(name) for name, info in GateBounds.model_fields.items()]


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


# ------------------------------------------------------ image rules, property-tested
_SEGMENT = st.text(alphabet="ab.-", min_size=1, max_size=3).map(lambda s: "a" + s)
_REPO = st.lists(_SEGMENT, min_size=1, max_size=3).map("/".join) | st.builds(
    lambda host, path: f"{host}:5000/{path}", _SEGMENT, _SEGMENT)
_DIGEST = st.sampled_from([D, E])
_REF = st.one_of(
    _REPO, st.builds(lambda r, t: f"{r}:{t}", _REPO, _SEGMENT), st.builds(lambda r, d: f"{r}@{d}", _REPO, _DIGEST),
    st.builds(lambda r, t, d: f"{r}:{t}@{d}", _REPO, _SEGMENT, _DIGEST), _DIGEST)
_ENTRY = st.one_of(_REPO, st.builds(lambda r, t: f"{r}:{t}", _REPO, _SEGMENT),
                   st.builds(lambda r, d: f"{r}@{d}", _REPO, _DIGEST), _REPO.map(lambda r: r + "/"), _DIGEST)


@settings(max_examples=300, deadline=None)
@given(ref=_REF, entries=st.lists(_ENTRY, min_size=1, max_size=3))
def test_the_image_rule_in_cel_is_provenance_image_allowed(vap, ref, entries):
    """The trainer-image validation alone, over generated references and rules: the same answer as the
    function the verifier applies to signing.provenance.allowedTrainerImages."""
    obj = {"spec": {"training": {"image": ref}}}
    params = _policy({"images": {"trainer": entries}})
    got = admit(vap, params=params, labels={}, obj=obj)
    assert (got is None) == image_allowed(ref, entries), (ref, entries, got)
