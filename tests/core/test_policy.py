"""HardenedModelPolicy: selection, each rule with its exact message, strictest-wins, and reading policy files.

The messages are the contract the chart's ValidatingAdmissionPolicy and the operator's status share (issue 27),
so they are asserted whole.
"""
import pytest
from hypothesis import given, settings, strategies as st

from helpers import example, merge_patch
from hardened_model.policy import (GateBounds, HardenedModelPolicy, Violation, load_policies, parse_policy, selects,
                                   violations)
from hardened_model.spec import GatesSection, SpecError, parse_manifest

DIGEST = "sha256:" + "a" * 64


def policy(name: str = "strict", **spec) -> HardenedModelPolicy:
    return parse_policy({"apiVersion": "hardened.dev/v1alpha1", "kind": "HardenedModelPolicy",
                         "metadata": {"name": name}, "spec": spec})


def model(patch: dict | None = None):
    """digits-demo: gates minCleanAccuracy 0.8, minRobustAccuracy 0.3, maxEpsilon 8, maxMembershipAUC 0.6;
    signing Enforce, no provenance, no data digest; the default images; no ServiceAccount."""
    doc = example("digits-demo")
    doc["spec"] = merge_patch(doc["spec"], patch or {})
    return parse_manifest(doc)


def lines(m, *policies, labels=None) -> list[str]:
    return [str(v) for v in violations(m, list(policies), labels or {})]


class TestGates:
    @pytest.mark.parametrize("gates, line", [
        ({"minCleanAccuracy": 0.9},
         "HardenedModelPolicy strict: spec.gates.minCleanAccuracy: 0.8 is below the policy's floor 0.9"),
        ({"minRobustAccuracy": 0.5},
         "HardenedModelPolicy strict: spec.gates.minRobustAccuracy: 0.3 is below the policy's floor 0.5"),
        ({"maxEpsilon": 3.0}, "HardenedModelPolicy strict: spec.gates.maxEpsilon: 8 is above the policy's ceiling 3"),
        ({"maxMembershipAUC": 0.55},
         "HardenedModelPolicy strict: spec.gates.maxMembershipAUC: 0.6 is above the policy's ceiling 0.55"),
        ({"minRecall": 0.7}, "HardenedModelPolicy strict: spec.gates.minRecall: not set; the policy requires at "
                             "least 0.7"),
        ({"minPRAUC": 0.5}, "HardenedModelPolicy strict: spec.gates.minPRAUC: not set; the policy requires at least "
                            "0.5"),
    ])
    def test_a_gate_less_strict_than_the_policy_is_refused(self, gates, line):
        assert lines(model(), policy(gates=gates)) == [line]

    def test_an_unset_max_gate_is_refused(self):
        m = model({"gates": {"maxEpsilon": None}})
        assert lines(m, policy(gates={"maxEpsilon": 3})) == [
            "HardenedModelPolicy strict: spec.gates.maxEpsilon: not set; the policy requires at most 3"]

    def test_min_clean_accuracy_is_always_set_and_defaults_to_zero(self):
        m = model({"gates": {"minCleanAccuracy": None}})
        assert lines(m, policy(gates={"minCleanAccuracy": 0.5})) == [
            "HardenedModelPolicy strict: spec.gates.minCleanAccuracy: 0 is below the policy's floor 0.5"]

    @pytest.mark.parametrize("gates", [
        {"minCleanAccuracy": 0.8, "minRobustAccuracy": 0.3, "maxEpsilon": 8, "maxMembershipAUC": 0.6},  # equal
        {"minCleanAccuracy": 0.5, "minRobustAccuracy": 0.1, "maxEpsilon": 10, "maxMembershipAUC": 0.9},  # looser
        {},
    ])
    def test_gates_at_least_as_strict_pass(self, gates):
        assert lines(model(), policy(gates=gates)) == []

    def test_the_bounds_are_the_spec_gates(self):
        """Every gate of the spec has its bound, under the same wire name (the message's field path)."""
        names = {n: f.alias for n, f in GatesSection.model_fields.items()}
        assert {n: f.alias for n, f in GateBounds.model_fields.items()} == names


class TestSigningAndData:
    def test_warn_is_refused_under_require_enforce(self):
        assert lines(model({"signing": {"mode": "Warn"}}), policy(signing={"requireEnforce": True})) == [
            'HardenedModelPolicy strict: spec.signing.mode: "Warn"; the policy requires "Enforce"']

    def test_enforce_passes(self):
        assert lines(model(), policy(signing={"requireEnforce": True})) == []

    @pytest.mark.parametrize("provenance", [None, {"required": False}])
    def test_provenance_not_required_is_refused(self, provenance):
        m = model({"signing": {"provenance": provenance}})
        assert lines(m, policy(signing={"requireProvenance": True})) == [
            "HardenedModelPolicy strict: spec.signing.provenance.required: false; the policy requires true"]

    @pytest.mark.parametrize("provenance", [{"required": True}, {"allowedTrainerImages": ["ghcr.io/org/"]},
                                            {"requireDataDigest": True}])
    def test_provenance_required_or_implied_passes(self, provenance):
        """allowedTrainerImages and requireDataDigest imply required, as the verifier reads them."""
        m = model({"signing": {"provenance": provenance}})
        assert lines(m, policy(signing={"requireProvenance": True})) == []

    def test_unpinned_data_is_refused(self):
        assert lines(model(), policy(signing={"requireDataDigest": True})) == [
            "HardenedModelPolicy strict: spec.data.sha256: not set; the policy requires the training data pinned"]

    def test_pinned_data_passes(self):
        assert lines(model({"data": {"sha256": "b" * 64}}), policy(signing={"requireDataDigest": True})) == []


class TestImages:
    def test_trainer_image_outside_the_list_is_refused(self):
        p = policy(images={"trainer": ["ghcr.io/platform/", "ghcr.io/org/trainer"]})
        assert lines(model({"training": {"image": "evil.io/trainer:1"}}), p) == [
            'HardenedModelPolicy strict: spec.training.image: "evil.io/trainer:1" matches none of the policy\'s '
            'trainer images ["ghcr.io/platform/","ghcr.io/org/trainer"]']

    def test_server_image_outside_the_list_is_refused(self):
        p = policy(images={"server": [f"ghcr.io/platform/server@{DIGEST}"]})
        assert lines(model({"serving": {"image": "ghcr.io/platform/server:0.1.0"}}), p) == [
            'HardenedModelPolicy strict: spec.serving.image: "ghcr.io/platform/server:0.1.0" matches none of the '
            f'policy\'s server images ["ghcr.io/platform/server@{DIGEST}"]']

    @pytest.mark.parametrize("rule, image", [
        ("ghcr.io/platform/", "ghcr.io/platform/trainer:2"),                         # prefix
        ("ghcr.io/platform/trainer", "ghcr.io/platform/trainer:2"),                  # repository, any tag
        ("ghcr.io/platform/trainer", f"ghcr.io/platform/trainer@{DIGEST}"),          # repository, a digest
        (f"ghcr.io/platform/trainer@{DIGEST}", f"ghcr.io/platform/trainer@{DIGEST}"),  # repo@digest
        (DIGEST, f"ghcr.io/platform/trainer@{DIGEST}"),                               # a digest
    ])
    def test_images_matching_a_rule_pass(self, rule, image):
        p = policy(images={"trainer": [rule], "server": [rule]})
        assert lines(model({"training": {"image": image}, "serving": {"image": image}}), p) == []

    def test_a_tag_does_not_match_a_digest_rule(self):
        p = policy(images={"trainer": [DIGEST]})
        assert [v.field for v in violations(model(), [p], {})] == ["spec.training.image"]


class TestServiceAccounts:
    def test_an_account_outside_the_list_is_refused(self):
        m = model({"aws": {"serviceAccountName": "admin"}})
        assert lines(m, policy(serviceAccounts=["models-a", "models-b"])) == [
            'HardenedModelPolicy strict: spec.aws.serviceAccountName: "admin" is not among the policy\'s service '
            'accounts ["models-a","models-b"]']

    def test_an_empty_list_allows_none(self):
        m = model({"aws": {"serviceAccountName": "admin"}})
        assert lines(m, policy(serviceAccounts=[])) == [
            'HardenedModelPolicy strict: spec.aws.serviceAccountName: "admin"; the policy allows none']

    @pytest.mark.parametrize("accounts", [[], ["models-a"], None])
    def test_no_account_is_always_allowed(self, accounts):
        assert lines(model(), policy(**({} if accounts is None else {"serviceAccounts": accounts}))) == []

    def test_a_listed_account_passes(self):
        assert lines(model({"aws": {"serviceAccountName": "models-a"}}), policy(serviceAccounts=["models-a"])) == []


class TestSeveralPolicies:
    def test_every_violation_of_every_policy_in_name_then_field_order(self):
        m = model({"signing": {"mode": "Warn"}, "aws": {"serviceAccountName": "admin"}})
        loose = policy("a-loose", gates={"maxEpsilon": 10, "minCleanAccuracy": 0.85})
        strict = policy("b-strict", gates={"minCleanAccuracy": 0.9, "maxEpsilon": 3},
                        signing={"requireEnforce": True}, serviceAccounts=[])
        assert lines(m, strict, loose) == [
            "HardenedModelPolicy a-loose: spec.gates.minCleanAccuracy: 0.8 is below the policy's floor 0.85",
            "HardenedModelPolicy b-strict: spec.gates.minCleanAccuracy: 0.8 is below the policy's floor 0.9",
            "HardenedModelPolicy b-strict: spec.gates.maxEpsilon: 8 is above the policy's ceiling 3",
            'HardenedModelPolicy b-strict: spec.signing.mode: "Warn"; the policy requires "Enforce"',
            'HardenedModelPolicy b-strict: spec.aws.serviceAccountName: "admin"; the policy allows none',
        ]

    def test_the_strictest_bound_refuses(self):
        """A model between two ceilings passes the looser policy and is refused by the stricter one."""
        m = model({"gates": {"maxEpsilon": 5}, "training": {"privacy": {"targetEpsilon": 5}}})
        refused = violations(m, [policy("ten", gates={"maxEpsilon": 10}), policy("three", gates={"maxEpsilon": 3})],
                             {})
        assert refused == [Violation("three", "spec.gates.maxEpsilon", "5 is above the policy's ceiling 3")]

    def test_violation_line_is_its_str(self):
        v = Violation("p", "spec.signing.mode", '"Warn"; the policy requires "Enforce"')
        assert str(v) == 'HardenedModelPolicy p: spec.signing.mode: "Warn"; the policy requires "Enforce"'

    def test_a_policy_that_does_not_select_the_namespace_changes_nothing(self):
        m = model({"signing": {"mode": "Warn"}, "training": {"image": "evil.io/t:1"}})
        other = policy("tenants", namespaceSelector={"matchLabels": {"hardened.dev/tenant": "true"}},
                       gates={"minCleanAccuracy": 0.99}, signing={"requireEnforce": True},
                       images={"trainer": ["ghcr.io/platform/"]}, serviceAccounts=[])
        assert violations(m, [other], {}) == []
        assert violations(m, [other], {"hardened.dev/tenant": "false", "team": "a"}) == []
        assert len(violations(m, [other], {"hardened.dev/tenant": "true"})) == 3

    def test_no_policy_and_a_policy_with_no_rule_ask_nothing(self):
        m = model({"signing": {"mode": "Warn"}, "aws": {"serviceAccountName": "admin"}})
        assert violations(m, [], {}) == []
        assert violations(m, [policy(), policy("empty-selector", namespaceSelector={})], {"a": "b"}) == []


SELECTORS = [
    # (selector, labels, selects)
    (None, {}, True),
    ({}, {}, True),
    ({}, {"team": "a"}, True),
    ({"matchLabels": {}}, {}, True),
    ({"matchExpressions": []}, {}, True),
    ({"matchLabels": {"team": "a"}}, {"team": "a", "env": "prod"}, True),
    ({"matchLabels": {"team": "a"}}, {"team": "b"}, False),
    ({"matchLabels": {"team": "a"}}, {}, False),
    ({"matchLabels": {"team": "a", "env": "prod"}}, {"team": "a"}, False),
    ({"matchLabels": {"team": ""}}, {"team": ""}, True),
    ({"matchLabels": {"team": ""}}, {}, False),                      # an empty value is not an absent key
    ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]}, {"team": "b"}, True),
    ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]}, {"team": "c"}, False),
    ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]}, {}, False),
    ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]}, {"team": "b"}, True),
    ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]}, {"team": "a"}, False),
    ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]}, {}, True),  # absent key
    ({"matchExpressions": [{"key": "team", "operator": "Exists"}]}, {"team": ""}, True),
    ({"matchExpressions": [{"key": "team", "operator": "Exists"}]}, {"other": "x"}, False),
    ({"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}, {}, True),
    ({"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}, {"team": "a"}, False),
    ({"matchLabels": {"env": "prod"}, "matchExpressions": [{"key": "team", "operator": "Exists"}]},
     {"env": "prod"}, False),                                        # every part must hold
    ({"matchLabels": {"env": "prod"}, "matchExpressions": [{"key": "team", "operator": "Exists"}]},
     {"env": "prod", "team": "a"}, True),
    ({"matchExpressions": [{"key": "hardened.dev/tenant", "operator": "In", "values": ["true"]},
                           {"key": "team", "operator": "NotIn", "values": ["platform"]}]},
     {"hardened.dev/tenant": "true", "team": "ml"}, True),
]


@pytest.mark.parametrize("selector, labels, expected", SELECTORS)
def test_selector_semantics_are_kubernetes_label_selectors(selector, labels, expected):
    p = policy(**({} if selector is None else {"namespaceSelector": selector}))
    assert selects(p, labels) is expected


class TestReading:
    POLICY = """\
apiVersion: hardened.dev/v1alpha1
kind: HardenedModelPolicy
metadata: {name: %s}
spec:
  gates: {maxEpsilon: %s}
"""

    def test_a_file_of_several_policies(self, tmp_path):
        f = tmp_path / "p.yaml"
        f.write_text(self.POLICY % ("a", 3) + "---\n" + self.POLICY % ("b", "1.0e-1"))
        assert [(p.metadata.name, p.spec.gates.max_epsilon) for p in load_policies(str(f))] == [("a", 3), ("b", 0.1)]

    def test_errors_name_the_file_document_and_field(self, tmp_path):
        f = tmp_path / "p.yaml"
        f.write_text(self.POLICY % ("a", 3) + "---\n" + self.POLICY % ("b", 300) + "  bogus: 1\n")
        with pytest.raises(SpecError) as err:
            load_policies(str(f))
        assert err.value.problems == [
            (f"{f}: document 2: spec.gates.maxEpsilon",
             "Invalid value: 300: spec.gates.maxEpsilon in body should be less than or equal to 100"),
            (f"{f}: document 2: spec.bogus", 'unknown field "spec.bogus"'),
        ]

    def test_a_repeated_name_is_refused(self, tmp_path):
        f = tmp_path / "p.yaml"
        f.write_text(self.POLICY % ("a", 3) + "---\n" + self.POLICY % ("a", 5))
        with pytest.raises(SpecError) as err:
            load_policies(str(f))
        assert err.value.problems == [(f"{f}: document 2: metadata.name", 'Duplicate value: "a"')]

    def test_an_empty_file_is_refused(self, tmp_path):
        f = tmp_path / "p.yaml"
        f.write_text("# nothing\n")
        with pytest.raises(SpecError, match="expected one or more HardenedModelPolicy documents"):
            load_policies(str(f))

    @pytest.mark.parametrize("doc, problems", [
        ({"apiVersion": "hardened.dev/v1alpha1", "kind": "HardenedModelPolicy", "metadata": {"name": "p"}},
         [("spec", "Required value")]),
        ({"apiVersion": "hardened.dev/v1alpha1", "kind": "HardenedModel", "metadata": {"name": "p"}, "spec": {}},
         [("kind", "Invalid value: \"HardenedModel\": Input should be 'HardenedModelPolicy'")]),
        ({"apiVersion": "hardened.dev/v1alpha1", "kind": "HardenedModelPolicy", "metadata": {"name": "p"},
          "spec": {"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In"}]}}},
         [("spec.namespaceSelector.matchExpressions[0].values",
           "Invalid value: null: values must be non-empty when operator is In or NotIn")]),
        ({"apiVersion": "hardened.dev/v1alpha1", "kind": "HardenedModelPolicy", "metadata": {"name": "p"},
          "spec": {"namespaceSelector": {"matchExpressions": [{"key": "t", "operator": "Exists", "values": ["a"]}]}}},
         [("spec.namespaceSelector.matchExpressions[0].values",
           'Invalid value: ["a"]: values may not be given when operator is Exists or DoesNotExist')]),
        ({"apiVersion": "hardened.dev/v1alpha1", "kind": "HardenedModelPolicy", "metadata": {"name": "p"},
          "spec": {"images": {"trainer": []}}},
         [("spec.images.trainer", "Invalid value: 0: spec.images.trainer in body should have at least 1 items")]),
        ({"apiVersion": "hardened.dev/v1alpha1", "kind": "HardenedModelPolicy", "metadata": {"name": "p"},
          "spec": {"signing": {"requireEnforce": "yes"}}},
         [("spec.signing.requireEnforce",
           'Invalid value: "string": spec.signing.requireEnforce in body must be of type boolean: "string"')]),
    ])
    def test_bad_policies_name_the_field(self, doc, problems):
        with pytest.raises(SpecError) as err:
            parse_policy(doc)
        assert err.value.problems == problems

    def test_a_policy_with_no_rule_is_valid(self):
        p = policy()
        assert p.spec.namespace_selector is None and p.spec.service_accounts is None
        assert p.spec.gates == GateBounds()


# ------------------------------------------------------------ properties
GATE_NAMES = list(GateBounds.model_fields)


def _bound(name):
    if name == "max_epsilon":
        return st.floats(0.01, 100)
    if name == "max_membership_auc":
        return st.floats(0.5, 1.0)
    return st.floats(0.0, 1.0)


def _gates(optional: bool):
    return st.fixed_dictionaries({}, optional={n: _bound(n) if not optional else st.one_of(st.none(), _bound(n))
                                               for n in GATE_NAMES})


BASE = model()


def _with_gates(values: dict):
    """digits-demo with exactly these gates (validity across sections is not the check's concern)."""
    gates = GatesSection(**{k: v for k, v in values.items() if v is not None})
    return BASE.model_copy(update={"spec": BASE.spec.model_copy(update={"gates": gates})})


def _less_strict(name, model_value, bound) -> bool:
    if model_value is None:
        return True
    return model_value < bound if name.startswith("min") else model_value > bound


@settings(max_examples=300, deadline=None)
@given(floors=_gates(optional=False), gates=_gates(optional=True))
def test_gate_violations_exist_iff_some_gate_is_less_strict(floors, gates):
    m = _with_gates(gates)
    p = policy(gates=GateBounds(**floors).model_dump(by_alias=True, exclude_none=True))
    got = {v.field for v in violations(m, [p], {})}
    want = {f"spec.gates.{GateBounds.model_fields[n].alias}" for n, b in floors.items()
            if _less_strict(n, getattr(m.spec.gates, n), b)}
    assert got == want


@settings(max_examples=300, deadline=None)
@given(floors=_gates(optional=False), gates=_gates(optional=True), data=st.data())
def test_loosening_a_policy_never_adds_violations(floors, gates, data):
    """Lowering floors, raising ceilings or dropping bounds and rules: the refused fields are a subset (the
    messages quote the bound, so they differ)."""
    m = _with_gates(gates)
    looser = {}
    for name, bound in floors.items():
        if data.draw(st.booleans(), label=f"drop {name}"):
            continue
        lo, hi = (0.0, bound) if name.startswith("min") else (bound, 100.0 if name == "max_epsilon" else 1.0)
        looser[name] = data.draw(st.floats(lo, hi), label=name)
    rules = {"signing": {"requireEnforce": True, "requireProvenance": True, "requireDataDigest": True},
             "images": {"trainer": ["ghcr.io/platform/"]}, "serviceAccounts": []}
    kept = {k: v for k, v in rules.items() if data.draw(st.booleans(), label=f"keep {k}")}
    strict = policy(gates=GateBounds(**floors).model_dump(by_alias=True, exclude_none=True), **rules)
    loose = policy(gates=GateBounds(**looser).model_dump(by_alias=True, exclude_none=True), **kept)
    assert {v.field for v in violations(m, [loose], {})} <= {v.field for v in violations(m, [strict], {})}


class TestTrust:
    """trust: the platform's keys and identities (issue 27 point 3)."""

    IDENTITY = {"identity": "trainer@ml.example.com", "oidcIssuer": "https://token.actions.githubusercontent.com"}
    KEYLESS = {"signing": {"method": "keyless", "keyless": IDENTITY, "privateKeySecret": None,
                           "publicKeySecret": None}}

    @pytest.fixture(scope="class")
    @classmethod
    def pems(cls):
        from hardened_model.signing import generate_key_pem

        return [generate_key_pem()[1] for _ in range(3)]

    def test_a_model_that_names_its_signing_secret_meets_a_key_policy(self, pems):
        assert lines(model(), policy(trust={"publicKeys": [pems[0]]})) == []

    def test_each_way_a_model_escapes_the_platforms_trust_is_refused_with_its_line(self, pems):
        keys, keyless = policy(trust={"publicKeys": [pems[0]]}), policy(trust={"keyless": [self.IDENTITY]})
        assert lines(model({"signing": {"privateKeySecret": None, "publicKeySecret": None}}), keys) == [
            "HardenedModelPolicy strict: spec.signing.privateKeySecret: not set; a key pair made for the model would "
            "not verify with the policy's trust.publicKeys: name the Secret with the platform's signing key"]
        assert lines(model(self.KEYLESS), keys) == [
            'HardenedModelPolicy strict: spec.signing.method: "keyless"; the policy trusts its public keys only '
            '(trust.publicKeys)']
        assert lines(model(), keyless) == [
            'HardenedModelPolicy strict: spec.signing.method: "key"; the policy trusts keyless identities only '
            '(trust.keyless)']
        other = model({**self.KEYLESS, "signing": {**self.KEYLESS["signing"], "keyless": {
            **self.IDENTITY, "identity": "me@evil.example"}}})
        assert lines(other, keyless) == [
            'HardenedModelPolicy strict: spec.signing.keyless: identity "me@evil.example" with issuer '
            '"https://token.actions.githubusercontent.com" is none of the policy\'s trust.keyless identities']
        own_root = model({"signing": {**self.KEYLESS["signing"], "keyless": {
            **self.IDENTITY, "trustConfig": {"kind": "ConfigMap", "name": "root", "key": "trust.json"}}}})
        assert lines(own_root, keyless) == [
            "HardenedModelPolicy strict: spec.signing.keyless.trustConfig: set; under the policy's trust.keyless the "
            "verifiers trust Sigstore's public-good root, not one from the model's namespace"]
        assert lines(model(self.KEYLESS), keyless) == []

    EPHEMERAL = {"signing": {"method": "ephemeral", "privateKeySecret": None, "publicKeySecret": None}}

    def test_an_ephemeral_model_meets_a_policy_that_trusts_per_run_keys(self):
        assert lines(model(self.EPHEMERAL), policy(trust={"ephemeralKeys": True})) == []
        assert lines(model(self.EPHEMERAL), policy(trust={"ephemeralKeys": False})) == []  # no trust root: no rule

    def test_a_method_the_policy_does_not_trust_is_refused_naming_every_root_it_trusts(self, pems):
        p = "HardenedModelPolicy strict: spec.signing.method: "
        keys = {"publicKeys": [pems[0]]}
        keyless = {"keyless": [self.IDENTITY]}
        per_run = {"ephemeralKeys": True}
        ephemeral = model(self.EPHEMERAL)
        assert lines(ephemeral, policy(trust=keys)) == [
            p + '"ephemeral"; the policy trusts its public keys only (trust.publicKeys)']
        assert lines(ephemeral, policy(trust=keyless)) == [
            p + '"ephemeral"; the policy trusts keyless identities only (trust.keyless)']
        assert lines(model(), policy(trust=per_run)) == [
            p + '"key"; the policy trusts per-run keys only (trust.ephemeralKeys)']
        assert lines(model(self.KEYLESS), policy(trust=per_run)) == [
            p + '"keyless"; the policy trusts per-run keys only (trust.ephemeralKeys)']
        assert lines(ephemeral, policy(trust={**keys, **keyless})) == [
            p + '"ephemeral"; the policy trusts its public keys (trust.publicKeys) or keyless identities '
                '(trust.keyless) only']
        assert lines(model(self.KEYLESS), policy(trust={**keys, **per_run})) == [
            p + '"keyless"; the policy trusts its public keys (trust.publicKeys) or per-run keys '
                '(trust.ephemeralKeys) only']
        assert lines(model(), policy(trust={**keyless, **per_run})) == [
            p + '"key"; the policy trusts keyless identities (trust.keyless) or per-run keys '
                '(trust.ephemeralKeys) only']

    def test_the_one_root_lines_of_keys_and_identities_are_unchanged_by_ephemeral_keys_false(self, pems):
        p = "HardenedModelPolicy strict: spec.signing.method: "
        assert lines(model(self.KEYLESS), policy(trust={"publicKeys": [pems[0]], "ephemeralKeys": False})) == [
            p + '"keyless"; the policy trusts its public keys only (trust.publicKeys)']
        assert lines(model(), policy(trust={"keyless": [self.IDENTITY], "ephemeralKeys": False})) == [
            p + '"key"; the policy trusts keyless identities only (trust.keyless)']

    def test_a_policy_trusting_keys_and_per_run_keys_admits_both_and_keeps_the_key_rule(self, pems):
        both = policy(trust={"publicKeys": [pems[0]], "ephemeralKeys": True})
        assert lines(model(), both) == []
        assert lines(model(self.EPHEMERAL), both) == []
        assert lines(model({"signing": {"privateKeySecret": None, "publicKeySecret": None}}), both) == [
            "HardenedModelPolicy strict: spec.signing.privateKeySecret: not set; a key pair made for the model would "
            "not verify with the policy's trust.publicKeys: name the Secret with the platform's signing key"]
        every = policy(trust={"publicKeys": [pems[0]], "keyless": [self.IDENTITY], "ephemeralKeys": True})
        assert [lines(model(patch), every) for patch in ({}, self.KEYLESS, self.EPHEMERAL)] == [[], [], []]

    def test_an_ephemeral_model_is_judged_by_each_policy_alone(self, pems):
        """The policies' keys sharing none refuses key models only; each policy refuses on its own account."""
        a = policy("a", trust={"publicKeys": [pems[0]], "ephemeralKeys": True})
        b = policy("b", trust={"publicKeys": [pems[1]], "ephemeralKeys": True})
        assert lines(model(self.EPHEMERAL), a, b) == []
        assert lines(model(self.EPHEMERAL), a, policy("c", trust={"publicKeys": [pems[0]]})) == [
            'HardenedModelPolicy c: spec.signing.method: "ephemeral"; the policy trusts its public keys only '
            '(trust.publicKeys)']

    def test_several_policies_trust_only_the_keys_all_of_them_list(self, pems):
        from hardened_model.policy import trusted_public_keys

        a = policy("a", trust={"publicKeys": [pems[0], pems[1]]})
        b = policy("b", trust={"publicKeys": [pems[1], pems[2]]})
        gates_only = policy("c", gates={"maxEpsilon": 8})
        assert trusted_public_keys([gates_only], {}) is None  # the model's own key Secret, as without a policy
        assert trusted_public_keys([a, gates_only], {}) == trusted_public_keys([a], {})
        assert len(trusted_public_keys([a], {})) == 2
        assert trusted_public_keys([a, b], {}) == (pems[1],)  # canonical PEM: generate_key_pem's own form
        elsewhere = policy("d", namespaceSelector={"matchLabels": {"tier": "prod"}}, trust={"publicKeys": [pems[2]]})
        assert trusted_public_keys([a, elsewhere], {"tier": "dev"}) == trusted_public_keys([a], {})
        assert trusted_public_keys([a, elsewhere], {"tier": "prod"}) == ()
        assert lines(model(), a, elsewhere, labels={"tier": "prod"}) == [
            "HardenedModelPolicy a, HardenedModelPolicy d: spec.signing: the policies' trust.publicKeys share no "
            "key, so no model signed with a key can verify in this namespace"]

    def test_a_key_policy_compares_keys_not_their_text(self, pems):
        from hardened_model.policy import trusted_public_keys

        reflowed = pems[0].replace("\n", "\n\n", 1)  # the same key, other whitespace
        assert trusted_public_keys([policy("a", trust={"publicKeys": [pems[0]]}),
                                    policy("b", trust={"publicKeys": [reflowed]})], {}) == (pems[0],)

    def test_require_countersignature_refuses_only_an_operator_without_a_platform_key(self):
        from hardened_model.policy import countersignature_refusals

        p = policy(trust={"requireCountersignature": True})
        assert [str(v) for v in countersignature_refusals([p], {}, countersigning=False)] == [
            "HardenedModelPolicy strict: trust.requireCountersignature: the operator has no platform signing key "
            "(chart value platformSigning.secretName), so no version could be countersigned"]
        assert countersignature_refusals([p], {}, countersigning=True) == []
        assert lines(model(), p) == []  # not for admission or `validate --policy`: only the operator knows

    @pytest.mark.parametrize("key, message", [
        ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a PEM public key: "),
        ("ssh-ed25519 AAAA", "should match"),
    ])
    def test_a_trust_key_that_is_no_ec_public_key_is_refused_naming_the_entry(self, key, message):
        with pytest.raises(SpecError) as err:
            policy(trust={"publicKeys": [key]})
        (field, text), = err.value.problems
        assert field == "spec.trust.publicKeys[0]" and message in text, text

    def test_an_rsa_key_is_refused_saying_the_verifiers_take_ec_keys(self):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        with pytest.raises(SpecError) as err:
            policy(trust={"publicKeys": [pem]})
        assert "RSAPublicKey: the verifiers take elliptic-curve keys (P-256/384/521)" in str(err.value)
