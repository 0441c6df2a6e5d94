"""The spec model: parsing, defaults, and errors that name the field and the value."""
import pathlib

import pytest
import yaml

from helpers import EXAMPLES, ROOT, example, merge_patch
from hardened_model.spec import (HardenedModelSpec, SpecError, load_manifest, load_yaml_documents,
                                    parse_manifest, parse_spec, spec_digest, to_wire)

INVALID = yaml.safe_load((ROOT / "tests/operator/invalid_specs.yaml").read_text())


def minimal() -> dict:
    return {"model": {"architecture": "cnn-8x8", "inputShape": [1, 8, 8], "numClasses": 10},
            "data": {"source": "builtin:digits"}}


class TestExamples:
    @pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
    def test_every_example_parses(self, path):
        model = load_manifest(str(path))
        assert model.kind == "HardenedModel"
        assert isinstance(model.spec, HardenedModelSpec)

    def test_there_are_the_three_documented_examples(self):
        assert {p.stem for p in EXAMPLES} >= {"digits-demo", "mnist-adv-dp", "eks-s3-irsa"}

    def test_demo_is_adversarial_and_private_with_key_signing(self):
        spec = load_manifest(str(ROOT / "examples/digits-demo.yaml")).spec
        assert spec.training.adversarial.enabled and spec.training.privacy.enabled
        assert spec.signing.method == "key" and spec.signing.private_key_secret is not None

    def test_eks_example_uses_s3_kms_irsa_and_gpu_nodes(self):
        spec = load_manifest(str(ROOT / "examples/eks-s3-irsa.yaml")).spec
        assert spec.artifacts.store.startswith("s3://") and spec.artifacts.kms_key_id
        assert spec.aws.service_account_name == "hardened-model-irsa"
        assert spec.training.resources.gpus == 1
        assert spec.training.tolerations[0].key == "nvidia.com/gpu"
        assert spec.training.node_selector["nvidia.com/gpu.present"] == "true"


class TestDefaults:
    def test_omitted_sections_get_their_defaults(self):
        spec = parse_spec(minimal())
        assert spec.training.epochs == 10
        assert spec.training.privacy.enabled is False
        assert spec.training.privacy.accountant == "prv"
        assert spec.serving.rate_limit.per_key.requests_per_second == 10.0
        assert spec.serving.rate_limit.global_ is None
        assert spec.signing.mode == "Enforce"
        assert spec.evaluation.attacks == ["fgsm", "pgd"]

    def test_wire_form_is_camel_case_without_unset_optionals(self):
        wire = to_wire(parse_spec(minimal()))
        assert wire["training"]["batchSize"] == 64
        assert "targetEpsilon" not in wire["training"]["privacy"]
        assert "global" not in wire["serving"]["rateLimit"]
        assert parse_spec(wire) == parse_spec(minimal())  # defaulting is idempotent

    def test_null_is_pruned_like_the_apiserver_does(self):
        data = minimal()
        data["training"] = {"epochs": None}
        assert parse_spec(data).training.epochs == 10

    def test_global_bucket_uses_the_reserved_word_on_the_wire(self):
        data = minimal()
        data["serving"] = {"rateLimit": {"global": {"requestsPerSecond": 100, "burst": 200}}}
        spec = parse_spec(data)
        assert spec.serving.rate_limit.global_.burst == 200.0
        assert to_wire(spec)["serving"]["rateLimit"]["global"] == {"requestsPerSecond": 100.0, "burst": 200.0}

    def test_training_digest_ignores_serving_changes(self):
        a = parse_spec(minimal())
        b = parse_spec({**minimal(), "serving": {"replicas": 5}})
        c = parse_spec({**minimal(), "training": {"epochs": 3}})
        sections = ("model", "data", "training")
        assert spec_digest(a, *sections) == spec_digest(b, *sections)
        assert spec_digest(a, *sections) != spec_digest(c, *sections)
        assert spec_digest(a) != spec_digest(b)


class TestStrictTypes:
    """JSON types as the apiserver sees them: no silent coercion."""

    @pytest.mark.parametrize("value, json_type", [(True, "boolean"), ("5", "string"), (5.0, "number"),
                                                  (5.5, "number")])
    def test_integer_fields_take_integers_only(self, value, json_type):
        data = minimal()
        data["training"] = {"epochs": value}
        with pytest.raises(SpecError) as err:
            parse_spec(data)
        assert err.value.fields == ["spec.training.epochs"]
        # the apiserver's words: it names the JSON type it got, not the value
        assert str(err.value) == (f'spec.training.epochs: Invalid value: "{json_type}": spec.training.epochs in body '
                                  f'must be of type integer: "{json_type}"')

    def test_number_fields_take_integers(self):
        data = minimal()
        data["training"] = {"learningRate": 1}
        assert parse_spec(data).training.learning_rate == 1.0

    def test_quantities_are_int_or_string(self):
        data = minimal()
        data["training"] = {"resources": {"cpu": 2, "memory": "512Mi"}}
        spec = parse_spec(data)
        assert spec.training.resources.cpu == 2 and spec.training.resources.memory == "512Mi"

    def test_yaml_floats_follow_yaml_1_2(self):
        # PyYAML alone reads 1e-5 as a string; kubectl reads a number.
        doc = load_yaml_documents("targetDelta: 1e-5\nx: 2E3\nname: v1e3\n")[0]
        assert doc == {"targetDelta": 1e-5, "x": 2000.0, "name": "v1e3"}


class TestErrors:
    def test_all_problems_are_reported_at_once(self):
        data = minimal()
        data["training"] = {"epochs": 0, "batchSize": 0}
        with pytest.raises(SpecError) as err:
            parse_spec(data)
        assert sorted(err.value.fields) == ["spec.training.batchSize", "spec.training.epochs"]

    def test_spec_that_is_not_an_object(self):
        with pytest.raises(SpecError, match=r"^spec: Invalid value: list: must be an object"):
            parse_spec([1, 2])

    def test_manifest_envelope(self):
        doc = example("digits-demo")
        doc["apiVersion"] = "hardened.dev/v1"
        doc["kind"] = "Model"
        doc["metadata"]["name"] = "x" * 41
        with pytest.raises(SpecError) as err:
            parse_manifest(doc)
        assert set(err.value.fields) == {"apiVersion", "kind", "metadata.name"}
        assert '"hardened.dev/v1"' in str(err.value)

    def test_manifest_name_must_be_a_dns_label(self):
        doc = example("digits-demo")
        doc["metadata"]["name"] = "Digits_Demo"
        with pytest.raises(SpecError, match=r'metadata.name: Invalid value: "Digits_Demo"'):
            parse_manifest(doc)

    def test_file_with_two_documents(self, tmp_path: pathlib.Path):
        path = tmp_path / "two.yaml"
        path.write_text((ROOT / "examples/digits-demo.yaml").read_text() + "\n---\n{a: 1}\n")
        with pytest.raises(SpecError, match="expected one YAML document, found 2"):
            load_manifest(str(path))


def test_there_are_at_least_20_invalid_cases():
    assert len(INVALID) >= 20
    assert len({c["name"] for c in INVALID}) == len(INVALID)


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c["name"])
def test_invalid_spec_is_rejected_naming_field_and_value(case):
    spec = merge_patch(example("digits-demo")["spec"], case["patch"])
    with pytest.raises(SpecError) as err:
        parse_spec(spec)
    assert err.value.fields == [case["field"]], str(err.value)
    assert case["message"] in str(err.value), str(err.value)
