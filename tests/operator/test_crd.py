"""The generated CRD: fresh, structural, and in agreement with the spec model.

``crd_admission.CrdAdmission`` does what the apiserver does with the CRD alone
(strict fields, null pruning, defaulting, OpenAPI validation, CEL). Every
example must be admitted and stored exactly as ``to_wire(parse_spec(...))``
defaults it; every invalid case and random mutation must get the same verdict
from both.
"""
import copy

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from helpers import EXAMPLES, ROOT, example, merge_patch
from crd_admission import CrdAdmission
from hardened_operator import crd as crdgen
from hardened_model.policy import parse_policy
from hardened_model.spec import SpecError, _cel_program, load_yaml_documents, parse_manifest, parse_spec, to_wire

CRD_FILE = ROOT / "crds/hardenedmodels.hardened.dev.yaml"
INVALID = yaml.safe_load((ROOT / "tests/operator/invalid_specs.yaml").read_text())


@pytest.fixture(scope="module")
def crd() -> dict:
    return yaml.safe_load(CRD_FILE.read_text())


@pytest.fixture(scope="module")
def admission(crd) -> CrdAdmission:
    return CrdAdmission(crd)


def schema_nodes(node, path="$"):
    yield path, node
    for key, sub in node.get("properties", {}).items():
        yield from schema_nodes(sub, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from schema_nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from schema_nodes(node["additionalProperties"], f"{path}{{}}")


class TestGeneratedFile:
    def test_committed_crd_is_current(self, crd):
        assert CRD_FILE.read_text() == crdgen.render_crd_yaml(), \
            "crds/ is stale: run `hardened-model crd > crds/hardenedmodels.hardened.dev.yaml`"

    def test_names_scope_and_subresource(self, crd):
        spec = crd["spec"]
        assert crd["metadata"]["name"] == "hardenedmodels.hardened.dev"
        assert spec["group"] == "hardened.dev" and spec["scope"] == "Namespaced"
        assert spec["names"] == {"kind": "HardenedModel", "listKind": "HardenedModelList",
                                 "plural": "hardenedmodels", "singular": "hardenedmodel", "shortNames": ["hm"]}
        (version,) = spec["versions"]
        assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
        assert version["subresources"] == {"status": {}}

    def test_printer_columns(self, crd):
        cols = {c["name"]: c["jsonPath"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
        assert list(cols) == ["Ready", "Phase", "Epsilon", "RobustAcc", "Verified", "Age"]
        assert cols["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
        assert cols["Epsilon"] == ".status.metrics.epsilon"

    def test_status_schema_matches_design(self, crd):
        status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
        assert set(status) == {"observedGeneration", "phase", "conditions", "training", "metrics", "artifact",
                               "serving", "lastFailure", "history"}
        assert status["history"]["maxItems"] == 10  # issue 29: bounded, newest first
        assert set(status["history"]["items"]["required"]) == {"version", "digest", "servedFrom"}
        assert status["phase"]["enum"] == ["Pending", "Training", "Verifying", "RollingOut", "Serving", "Failed"]
        cond = status["conditions"]
        assert cond["x-kubernetes-list-type"] == "map" and cond["x-kubernetes-list-map-keys"] == ["type"]
        assert set(cond["items"]["required"]) == {"type", "status", "reason", "lastTransitionTime"}
        assert set(status["metrics"]["properties"]) == {"cleanAccuracy", "robustAccuracy", "epsilon", "membershipAUC",
                                                        "recall", "precision", "prAUC", "balancedAccuracy",
                                                        "robustRecall"}


class TestStructural:
    """The rules the apiserver enforces on a CRD schema (apiextensions structural schema)."""

    def test_every_node_has_a_type_or_is_int_or_string(self, crd):
        root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, node in schema_nodes(root):
            if node.get("x-kubernetes-int-or-string"):
                assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
                assert "type" not in node, path
            else:
                assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, path
                assert "anyOf" not in node and "oneOf" not in node and "allOf" not in node, path
            assert "$ref" not in node and "nullable" not in node and "const" not in node, path
            assert not ("properties" in node and "additionalProperties" in node), path
            for bound in ("exclusiveMinimum", "exclusiveMaximum"):  # OpenAPI v3: a flag, not a number
                assert isinstance(node.get(bound, True), bool), path

    def test_every_cel_rule_compiles_and_names_a_field_of_its_schema(self, crd):
        root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        rules = [(p, n, r) for p, n in schema_nodes(root) for r in n.get("x-kubernetes-validations", [])]
        assert len(rules) >= 15
        for path, node, rule in rules:
            assert rule["message"] and rule["fieldPath"].startswith("."), path
            target = node
            for part in rule["fieldPath"].lstrip(".").split("."):  # the apiserver refuses a path not in the schema
                target = target["properties"][part]
            _cel_program(rule["rule"])  # raises on a syntax error

    def test_no_message_expressions(self, crd):
        """A real apiserver estimated `'a (' + string(self.a) + ')'` at over 100x the CEL cost budget and
        refused the CRD; the emulation cannot estimate cost (issue 14)."""
        assert "messageExpression" not in CRD_FILE.read_text()

    def test_defaults_are_admitted_values(self, crd, admission):
        """A default must itself be valid, or the apiserver rejects the CRD."""
        root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        import jsonschema
        for path, node in schema_nodes(root):
            if "default" in node:
                jsonschema.Draft4Validator({k: v for k, v in node.items() if k != "default"}).validate(node["default"])

    def test_defaults_pass_their_own_cel_rules_as_written(self, crd):
        """The apiserver evaluates a node's CEL rules on its default as written, without applying the nested
        defaults first: `default: {}` on a section whose rule reads `self.enabled` is refused
        ("no such key: enabled"). Found on a real v1.36 apiserver (issue 14)."""
        root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        checked = 0
        for path, node in schema_nodes(root):
            if "default" in node and node.get("x-kubernetes-validations"):
                assert CrdAdmission.cel_on_default(node) == [], path
                checked += 1
        assert checked >= 3  # training.privacy, serving.validation, signing at least

    def test_optional_sections_default_to_their_defaulted_value(self, crd):
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        assert spec["required"] == ["model", "data"]
        defaults = to_wire(parse_spec({"model": {"architecture": "mlp", "inputShape": [4], "numClasses": 3},
                                       "data": {"source": "file:///d.npz"}}))
        for section in ("training", "evaluation", "gates", "artifacts", "signing", "serving", "monitoring", "aws"):
            assert spec["properties"][section]["default"] == defaults[section], section


class TestAgreement:
    @pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
    def test_examples_are_admitted_and_defaulted_identically(self, admission, path):
        doc = load_yaml_documents(path.read_text())[0]
        stored, errors = admission.admit(doc)
        assert errors == []
        assert stored["spec"] == to_wire(parse_manifest(doc).spec)

    def test_minimal_spec_defaults_identically(self, admission):
        doc = {"apiVersion": "hardened.dev/v1alpha1", "kind": "HardenedModel", "metadata": {"name": "m"},
               "spec": {"model": {"architecture": "mlp", "inputShape": [4], "numClasses": 3},
                        "data": {"source": "file:///d.npz"}}}
        stored, errors = admission.admit(doc)
        assert errors == []
        assert stored["spec"] == to_wire(parse_spec(doc["spec"]))

    @pytest.mark.parametrize("case", INVALID, ids=lambda c: c["name"])
    def test_invalid_case_is_rejected_by_the_crd_at_the_same_field(self, admission, case):
        doc = example("digits-demo")
        doc["spec"] = merge_patch(doc["spec"], case["patch"])
        _, errors = admission.admit(doc)
        assert errors, "the CRD admitted an invalid spec"
        field = case["field"]
        parent, _, leaf = field.rpartition(".")
        assert any(p == field or (p == parent and f"'{leaf}'" in m) for p, m in errors), errors
        if case.get("cel"):
            assert any(case["message"] in m for _, m in errors), errors  # CEL: the very same message

    def test_name_length_rule(self, admission):
        doc = example("digits-demo")
        doc["metadata"]["name"] = "m" * 41
        _, errors = admission.admit(doc)
        assert [path for path, _ in errors] == ["metadata.name"]
        with pytest.raises(SpecError) as err:
            parse_manifest(doc)
        assert err.value.problems == [("metadata.name", "Too long: may not be more than 40 bytes")]


# Random mutations of a valid spec: both validators must give the same verdict.
LEAVES = []


def _leaves(value, path=()):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(value, list) and value and not isinstance(value[0], (dict, list)):
        yield path
        for i in range(len(value)):
            yield from _leaves(value[i], path + (i,))
    else:
        yield path


BASE = {name: to_wire(parse_manifest(example(name)).spec) for name in ("digits-demo", "mnist-adv-dp", "eks-s3-irsa")}
values = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 70000), st.sampled_from([0, 1, 2, 10, 16, 17, 1024, 2**31]),
    st.floats(-2, 20, allow_nan=False).filter(lambda f: f != int(f)),
    st.sampled_from([0.0, 0.05, 0.5, 0.99, 1.5, 1e-5]),
    st.sampled_from(["", "pgd", "fgsm", "Enforce", "keyless", "500m", "4Gi", "lots", "s3://b/k", "pvc://x",
                     "file:///d", "builtin:digits", "memory://", "redis://r:6379", "us-east-1", "label",
                     "cnn-28x28", "mlp", "https://issuer.example.com", "x" * 70]),
    st.lists(st.integers(0, 30), max_size=5),
    st.dictionaries(st.sampled_from(["enabled", "eps", "name", "key", "bogus"]),
                    st.sampled_from([True, 0.1, "k", 3]), max_size=3),
)


def _set(doc, path, value):
    node = doc
    for key in path[:-1]:
        node = node[key]
    if value is None and isinstance(node, dict):
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=st.sampled_from(sorted(BASE)), data=st.data(), n=st.integers(1, 2))
def test_crd_and_spec_model_agree_on_random_mutations(admission, base, data, n):
    spec = copy.deepcopy(BASE[base])
    for _ in range(n):
        leaves = list(_leaves(spec))
        path = data.draw(st.sampled_from(leaves))
        _set(spec, path, data.draw(values))
    doc = {"apiVersion": "hardened.dev/v1alpha1", "kind": "HardenedModel", "metadata": {"name": "m"}, "spec": spec}
    stored, crd_errors = admission.admit(doc)
    try:
        parsed = parse_spec(spec)
        model_errors = []
    except SpecError as err:
        model_errors = err.problems
    assert bool(crd_errors) == bool(model_errors), (spec, crd_errors, model_errors)
    if not crd_errors:
        assert stored["spec"] == to_wire(parsed)


# ------------------------------------------------------------------ HardenedModelPolicy (issue 27)
POLICY_CRD_FILE = ROOT / "crds/hardenedmodelpolicies.hardened.dev.yaml"
CHART_POLICY_CRD_FILE = ROOT / "charts/hardened-model-operator/crds/hardenedmodelpolicies.hardened.dev.yaml"
K8S_VERSIONS = ["1.30.0", "1.33.0", "1.37.0"]  # as tests/operator/test_manifests.py


def policy_doc(**spec) -> dict:
    return {"apiVersion": "hardened.dev/v1alpha1", "kind": "HardenedModelPolicy", "metadata": {"name": "p"},
            "spec": spec}


FULL_POLICY = policy_doc(
    namespaceSelector={"matchLabels": {"hardened.dev/tenant": "true"},
                       "matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["platform"]},
                                            {"key": "legacy", "operator": "DoesNotExist"}]},
    gates={"minCleanAccuracy": 0.9, "minRobustAccuracy": 0.5, "maxEpsilon": 3, "maxMembershipAUC": 0.6,
           "minRecall": 0.8, "minPRAUC": 0.5},
    signing={"requireEnforce": True, "requireProvenance": True, "requireDataDigest": True},
    images={"trainer": ["ghcr.io/platform/"], "server": ["ghcr.io/platform/server@sha256:" + "a" * 64]},
    serviceAccounts=["models"])


@pytest.fixture(scope="module")
def policy_crd() -> dict:
    return yaml.safe_load(POLICY_CRD_FILE.read_text())


class TestPolicyCrd:
    def test_committed_crd_and_chart_copy_are_current(self):
        for path in (POLICY_CRD_FILE, CHART_POLICY_CRD_FILE):
            assert path.read_text() == crdgen.render_crd_yaml("HardenedModelPolicy"), \
                f"{path} is stale: run `hardened-model crd --policy > {path.relative_to(ROOT)}`"

    def test_names_scope_and_no_status(self, policy_crd):
        spec = policy_crd["spec"]
        assert policy_crd["metadata"]["name"] == "hardenedmodelpolicies.hardened.dev"
        assert spec["group"] == "hardened.dev" and spec["scope"] == "Cluster"
        assert spec["names"] == {"kind": "HardenedModelPolicy", "listKind": "HardenedModelPolicyList",
                                 "plural": "hardenedmodelpolicies", "singular": "hardenedmodelpolicy",
                                 "shortNames": ["hmp"]}
        (version,) = spec["versions"]
        model_version = crdgen.build_crd()["spec"]["versions"][0]["name"]
        assert version["name"] == model_version and version["served"] and version["storage"]
        assert "subresources" not in version

    def test_printer_columns(self, policy_crd):
        cols = {c["name"]: c["jsonPath"] for c in policy_crd["spec"]["versions"][0]["additionalPrinterColumns"]}
        assert cols == {"Max-Epsilon": ".spec.gates.maxEpsilon", "Enforce": ".spec.signing.requireEnforce",
                        "Age": ".metadata.creationTimestamp"}

    @pytest.mark.parametrize("version", K8S_VERSIONS)
    def test_passes_strict_validation(self, policy_crd, version):
        import kubernetes_validate

        kubernetes_validate.validate(policy_crd, version, strict=True)

    def test_schema_is_structural_and_its_rules_compile(self, policy_crd):
        root = policy_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        rules = 0
        for path, node in schema_nodes(root):
            assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, path
            assert not ({"anyOf", "oneOf", "allOf", "$ref", "nullable", "const"} & set(node)), path
            assert not ("properties" in node and "additionalProperties" in node), path
            for bound in ("exclusiveMinimum", "exclusiveMaximum"):
                assert isinstance(node.get(bound, True), bool), path
            for rule in node.get("x-kubernetes-validations", []):
                node["properties"][rule["fieldPath"].lstrip(".")]  # the apiserver refuses a path not in the schema
                _cel_program(rule["rule"])
                rules += 1
            if "default" in node and node.get("x-kubernetes-validations"):
                assert CrdAdmission.cel_on_default(node) == [], path
        assert rules == 4  # the label selector requirement's values; no tag in images.trainer or images.server

    def test_gate_bounds_have_the_gates_ranges(self, policy_crd, crd):
        bounds = policy_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        gates = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["gates"]
        keep = ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
        assert {k: {x: v[x] for x in keep if x in v} for k, v in bounds["properties"]["gates"]["properties"].items()} \
            == {k: {x: v[x] for x in keep if x in v} for k, v in gates["properties"].items()}

    @pytest.mark.parametrize("doc", [policy_doc(), FULL_POLICY], ids=["empty", "full"])
    def test_policies_are_admitted_and_defaulted_as_parse_policy_does(self, policy_crd, doc):
        stored, errors = CrdAdmission(policy_crd).admit(copy.deepcopy(doc))
        assert errors == []
        assert stored["spec"] == to_wire(parse_policy(doc).spec)

    @pytest.mark.parametrize("spec, field", [
        ({"gates": {"maxEpsilon": 0}}, "spec.gates.maxEpsilon"),
        ({"gates": {"minCleanAccuracy": 1.5}}, "spec.gates.minCleanAccuracy"),
        ({"images": {"trainer": []}}, "spec.images.trainer"),
        ({"images": {"server": ["Not An Image"]}}, "spec.images.server[0]"),
        ({"images": {"trainer": ["ghcr.io/acme/trainer:1.0"]}}, "spec.images.trainer"),
        ({"images": {"server": ["localhost:5000/server", "localhost:5000/server:2"]}}, "spec.images.server"),
        ({"serviceAccounts": ["Bad_Name"]}, "spec.serviceAccounts[0]"),
        ({"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Has"}]}},
         "spec.namespaceSelector.matchExpressions[0].operator"),
        ({"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
         "spec.namespaceSelector.matchExpressions[0].values"),
        ({"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}},
         "spec.namespaceSelector.matchExpressions[0].values"),
        ({"namespaceSelector": {"matchLabels": {"team": "not valid!"}}}, "spec.namespaceSelector.matchLabels.team"),
    ])
    def test_invalid_policies_are_refused_by_both_at_the_same_field(self, policy_crd, spec, field):
        doc = policy_doc(**spec)
        _, errors = CrdAdmission(policy_crd).admit(copy.deepcopy(doc))
        assert field in [p for p, _ in errors], errors
        with pytest.raises(SpecError) as err:
            parse_policy(doc)
        assert err.value.fields == [field]
