"""The fraud endpoint end to end (issue 15): `hardened-model up examples/fraud-tabular.yaml` on a synthetic CSV
trains, signs, verifies and serves; a valid request gets a fraud probability, in either request form; a string
amount, a NaN, an unknown category or an out-of-range value gets a 400 that names the feature.
The request parser's every rule is also checked directly (TabularSchema)."""
import importlib.machinery
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from hardened_server.errors import InvalidInput
from hardened_server.protocol import Limits
from hardened_server.tabular import TabularSchema
from helpers import ROOT, example, free_port, http

FEATURES = [{"name": "amt", "type": "number", "min": 0.0, "max": 1000.0},
            {"name": "category", "type": "category", "vocabulary": ["home", "travel"]},
            {"name": "hour", "type": "integer", "min": 0.0, "max": 23.0}]
SCHEMA = TabularSchema(FEATURES, tolerance=0.1)
LIMITS = Limits(max_batch_size=4)


def named(amt=12.5, category="home", hour=3, override=None):
    inputs = [{"name": "amt", "shape": [1], "datatype": "FP64", "data": [amt]},
              {"name": "category", "shape": [1], "datatype": "BYTES", "data": [category]},
              {"name": "hour", "shape": [1], "datatype": "INT64", "data": [hour]}]
    for tensor in inputs:
        tensor.update((override or {}).get(tensor["name"], {}))
    return json.dumps({"inputs": inputs}).encode()


def one_tensor(rows):
    return json.dumps({"inputs": [{"name": "x", "shape": [len(rows), 3], "datatype": "FP32",
                                   "data": [v for r in rows for v in r]}]}).encode()


class TestTabularSchema:
    def test_both_forms_give_the_same_row(self):
        a = SCHEMA.parse(named(12.5, "travel", 3), LIMITS).x
        b = SCHEMA.parse(one_tensor([[12.5, 1, 3]]), LIMITS).x
        assert a.tolist() == b.tolist() == [[12.5, 1.0, 3.0]] and a.dtype == np.float32

    @pytest.mark.parametrize("body, feature, text", [
        (named(amt="12.5"), "amt", "str '12.5' is not a number"),
        (named(amt=None), "amt", "null (a missing value) is not a number"),
        (named(amt=True), "amt", "bool True is not a number"),
        (named().replace(b"12.5", b"NaN"), "amt", "NaN is not a number JSON allows"),
        (named().replace(b"12.5", b"-Infinity"), "amt", "-Infinity is not a number JSON allows"),
        (named(category="crypto"), "category", "'crypto' is not in its vocabulary"),
        (named(category=1), "category", "1 is not a string"),
        (named(override={"category": {"datatype": "FP32"}}), "category", "datatype BYTES"),
        (named(hour=3.5), "hour", "3.5 is not an integer"),
        (named(hour=30), "hour", "30 is not within [-2.3, 25.3]"),
        (named(amt=1101), "amt", "1101 is not within [-100, 1100]"),
        (named(override={"amt": {"datatype": "BYTES"}}), "amt", "datatype one of"),
        (named(override={"hour": {"shape": [2]}}), "hour", "batch size 2 differs"),
        (one_tensor([[12.5, 1, 30]]), "hour", "30 is not within"),
        (one_tensor([[12.5, 2, 3]]), "category", "2 is not a vocabulary index (0..1)"),
        (one_tensor([[12.5, 0.5, 3]]), "category", "0.5 is not a vocabulary index"),
        (json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, "a", 3]}]}).encode(),
         "category", "str 'a' is not a number"),
        (json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 0, 3]}]})
         .replace("[1, 0, 3]", "[NaN, 0, 3]").encode(), "amt", "NaN is not a number JSON allows"),
    ], ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None)
    def test_every_refusal_names_the_feature(self, body, feature, text):
        with pytest.raises(InvalidInput) as err:
            SCHEMA.parse(body, LIMITS)
        assert err.value.field == f"inputs[{feature}]" and text in err.value.message, (err.value.field,
                                                                                       err.value.message)

    def test_missing_unknown_and_repeated_features(self):
        body = json.loads(named())
        with pytest.raises(InvalidInput, match=r"missing feature\(s\) \['hour'\]"):
            SCHEMA.parse(json.dumps({"inputs": body["inputs"][:2]}).encode(), LIMITS)
        with pytest.raises(InvalidInput, match="'zip' is not a feature of this model"):
            SCHEMA.parse(json.dumps({"inputs": body["inputs"][:2] + [{**body["inputs"][2], "name": "zip"}]})
                         .encode(), LIMITS)
        with pytest.raises(InvalidInput, match="given twice"):
            SCHEMA.parse(json.dumps({"inputs": body["inputs"][:2] + [body["inputs"][0]]}).encode(), LIMITS)
        with pytest.raises(InvalidInput, match="batch size 5 exceeds 4"):
            SCHEMA.parse(one_tensor([[1, 0, 1]] * 5), LIMITS)


# ------------------------------------------------------------ end to end
def _generator():
    loader = importlib.machinery.SourceFileLoader("make_transactions", str(ROOT / "scripts/make-transactions"))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("make_transactions", loader))
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fraud(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fraud")
    data = tmp / "transactions-synthetic.csv"
    gen = _generator()
    gen.write(gen.make(20_000, seed=0), data)
    doc = example("fraud-tabular")
    doc["spec"]["data"]["source"] = f"file://{data}"
    doc["spec"]["training"]["epochs"] = 3
    doc["spec"]["gates"] = {"minRecall": 0.2, "maxEpsilon": 3.0}  # 80 positives in 20,000 rows
    spec = tmp / "fraud.yaml"
    spec.write_text(yaml.safe_dump(doc))
    port = free_port()
    out = subprocess.run([sys.executable, "-m", "hardened_operator.cli", "up", str(spec), "--detach", "--port",
                          str(port)], cwd=tmp, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    yield {"url": f"http://127.0.0.1:{port}/v2/models/fraud-tabular/infer", "out": out.stdout, "tmp": tmp,
           "key": (tmp / ".hardened/fraud-tabular/api-keys").read_text().split()[0]}
    subprocess.run([sys.executable, "-m", "hardened_operator.cli", "down", str(spec)], cwd=tmp, timeout=60)


def call(fraud, body: dict):
    return http("POST", fraud["url"], body, {"Authorization": f"Bearer {fraud['key']}"})


def row(**values) -> dict:
    base = {"amt": 62.3, "category": "home", "hour": 14, "age": 45, "city_pop": 34672, "lat": 36.7, "long": -96.4,
            "merch_lat": 36.7, "merch_long": -96.4}
    base.update(values)
    inputs = []
    for f in example("fraud-tabular")["spec"]["data"]["features"]:
        dtype = "BYTES" if f["type"] == "category" else "INT64" if f["type"] == "integer" else "FP64"
        inputs.append({"name": f["name"], "shape": [1], "datatype": dtype, "data": [base[f["name"]]]})
    return {"inputs": inputs}


@pytest.mark.slow
@pytest.mark.server
def test_up_trains_signs_verifies_and_serves_a_fraud_probability(fraud):
    assert "class '1'" in fraud["out"] and "recall" in fraud["out"] and "gates              passed" in fraud["out"]
    status, body, _ = call(fraud, row())
    assert status == 200, body
    out = {o["name"]: o for o in body["outputs"]}
    assert out["probabilities"]["shape"] == [1, 2] and out["label"]["data"][0] in ("legit", "fraud")
    assert abs(sum(out["probabilities"]["data"]) - 1) < 0.01
    # the same row as one tensor, the category as its vocabulary index (home is 6)
    tensor = {"inputs": [{"name": "x", "shape": [1, 9], "datatype": "FP32",
                          "data": [62.3, 6, 14, 45, 34672, 36.7, -96.4, 36.7, -96.4]}]}
    status, body2, _ = call(fraud, tensor)
    assert status == 200 and body2["outputs"][0]["data"] == out["probabilities"]["data"]
    # a large late-night online purchase scores higher than the afternoon grocery one
    risky = call(fraud, row(amt=950.0, category="shopping_net", hour=1))[1]
    assert risky["outputs"][0]["data"][1] > out["probabilities"]["data"][1]


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize("values, feature", [({"amt": "281"}, "amt"), ({"category": "crypto"}, "category"),
                                             ({"age": 300}, "age"), ({"hour": 24.5}, "hour")])
def test_bad_rows_get_a_400_naming_the_feature(fraud, values, feature):
    status, body, _ = call(fraud, row(**values))
    assert status == 400 and body["field"] == f"inputs[{feature}]" and feature in body["error"], body


@pytest.mark.slow
@pytest.mark.server
def test_a_nan_amount_gets_a_400_naming_the_feature(fraud):
    raw = json.dumps(row()).replace("[62.3]", "[NaN]").encode()
    status, body, _ = http("POST", fraud["url"], raw, {"Authorization": f"Bearer {fraud['key']}"})
    assert status == 400 and body["field"] == "inputs[amt]", body


@pytest.mark.slow
def test_the_signed_model_records_its_features_and_figures(fraud):
    version_dirs = list((fraud["tmp"] / ".hardened/volumes/hardened-models/fraud-tabular").iterdir())
    meta = json.loads((version_dirs[0] / "model/model.json").read_text())
    metrics = json.loads((version_dirs[0] / "model/metrics.json").read_text())
    features = {f["name"]: f for f in meta["tabular"]["features"]}
    assert features["amt"]["min"] == 0.0 and features["amt"]["boundsFrom"] == "training data"
    assert features["lat"] == {"name": "lat", "type": "number", "min": -90.0, "max": 90.0, "boundsFrom": "spec",
                               "mutable": False}
    assert meta["tabular"]["positiveClass"] == "1" and meta["tabular"]["negativeClass"] == "0"
    assert len(meta["normalization"]["mean"]) == 8  # the number columns; the category is one-hot encoded
    for key in ("recall", "precision", "prAUC", "rocAUC", "balancedAccuracy", "robustRecall"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert sum(map(sum, metrics["positiveClass"]["confusionMatrix"])) == 5000  # the 25% test split
    report = (version_dirs[0] / "model/report.html").read_text()
    assert "plot-pr-curve" in report and "plot-confusion-matrix" in report


@pytest.mark.parametrize("mode, min_confidence, action, expected", [
    ("probabilities", 0.0, "flag", {"probabilities": [[0.123456, 0.876544], [0.6, 0.4]], "label": ["fraud", "legit"]}),
    ("rounded", 0.0, "flag", {"probabilities": [[0.12, 0.88], [0.6, 0.4]], "label": ["fraud", "legit"]}),
    ("label", 0.0, "flag", {"label": ["fraud", "legit"]}),
    ("label", 0.7, "flag", {"label": ["fraud", "legit"], "low_confidence": [False, True]}),
    ("rounded", 0.7, "abstain", {"probabilities": [[0.12, 0.88], [0.0, 0.0]], "label": ["fraud", "abstain"],
                                 "low_confidence": [False, True]}),
])
def test_output_modes_work_for_a_binary_model(mode, min_confidence, action, expected):
    from hardened_server.validation import harden_output
    from hardened_model.contracts import ServingConfig, build_serving_config
    from hardened_model.spec import parse_manifest

    doc = example("fraud-tabular")
    doc["spec"]["serving"]["output"] = {"mode": mode, "decimals": 2, "minConfidence": min_confidence,
                                        "lowConfidenceAction": action}
    cfg = ServingConfig.model_validate(build_serving_config(parse_manifest(doc)))
    body = {"model_name": "fraud-tabular", "outputs": [
        {"name": "probabilities", "datatype": "FP32", "shape": [2, 2], "data": [0.123456, 0.876544, 0.6, 0.4]},
        {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["fraud", "legit"]}]}
    out, _ = harden_output(body, cfg)
    got = {o["name"]: np.asarray(o["data"], dtype=object if o["datatype"] != "FP32" else np.float32).reshape(
        o["shape"]).tolist() for o in out["outputs"]}
    assert set(got) == set(expected)
    for name, value in expected.items():
        if name == "probabilities":
            assert np.allclose(got[name], value, atol=1e-6), got[name]
        else:
            assert got[name] == value
