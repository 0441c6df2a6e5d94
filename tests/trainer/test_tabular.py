"""Tabular data (issue 15): the loader's errors name file, column and row; the model's first layers; attacks that
keep to the features' constraints; positive-class metrics and gates."""
import json
import pathlib

import numpy as np
import pytest
import torch

from hardened_model.gates import check_gates
from hardened_model.spec import parse_spec
from hardened_trainer.data import DataError, load_dataset
from hardened_trainer.tabular import constraints, load_table
from helpers import ROOT, example

FRAUD = example("fraud-tabular")["spec"]
HEADER = "amt,category,hour,age,city_pop,lat,long,merch_lat,merch_long,is_fraud"


def spec_for(path: pathlib.Path, **data):
    s = json.loads(json.dumps(FRAUD))
    s["data"]["source"] = f"file://{path}"
    s["data"].update(data)
    return parse_spec(s)


def write(tmp_path, rows: list[str], header: str = HEADER, name: str = "t.csv") -> pathlib.Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


GOOD = ["12.5,home,14,40,1200,40.1,-80.2,40.2,-80.1,0", "980.0,shopping_net,2,61,300,35.0,-100.0,36.1,-99.0,1",
        "33.0,grocery_pos,10,30,50000,45.0,-75.0,45.1,-75.2,0"]


class TestLoader:
    def test_a_good_file_keeps_its_values_unscaled(self, tmp_path):
        table = load_table(spec_for(write(tmp_path, GOOD)).data)
        assert table.x.shape == (3, 9) and table.x.dtype == np.float32
        assert table.x[:, 0].tolist() == [12.5, 980.0, 33.0]  # 281 and 1,077 were once divided by 255
        assert table.x[:, 1].tolist() == [6, 11, 4]  # vocabulary indices
        assert table.x[:, 6].tolist() == pytest.approx([-80.2, -100.0, -75.0])
        assert table.y.tolist() == [0, 1, 0] and table.negative_class == "0"

    def test_parquet_reads_the_same(self, tmp_path):
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        csv = write(tmp_path, GOOD)
        parquet = tmp_path / "t.parquet"
        pq.write_table(pacsv.read_csv(csv), parquet)  # typed columns: int64 labels, float64 amounts
        assert pa.types.is_integer(pq.read_table(parquet).schema.field("is_fraud").type)
        a, b = load_table(spec_for(csv).data), load_table(spec_for(parquet).data)
        assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)

    @pytest.mark.parametrize("rows, header, expected", [
        ([], HEADER, "the file has a header but no rows"),
        ([",".join(r.split(",")[:2] + r.split(",")[3:]) for r in GOOD], HEADER.replace("hour,", ""),
         "missing column(s) ['hour']"),
        (GOOD[:1] + ["12.5,home,14,40,1200,40.1,-80.2,40.2,-80.1,0,7"], HEADER, "Expected 10 columns, got 11"),
        ([r + ",x" for r in GOOD], HEADER + ",note", "['note'] are neither a feature nor the label"),
        (GOOD[:1] + ["12x,home,14,40,1200,40.1,-80.2,40.2,-80.1,0"], HEADER, "column 'amt', row 2 (line 3): '12x' is not a number"),
        (GOOD[:1] + [",home,14,40,1200,40.1,-80.2,40.2,-80.1,0"], HEADER, "column 'amt', row 2 (line 3): the cell is empty"),
        (GOOD[:2] + ["NaN,home,14,40,1200,40.1,-80.2,40.2,-80.1,0"], HEADER, "column 'amt', row 3 (line 4): the cell is empty"),
        (GOOD[:1] + ["5,home,14.5,40,1200,40.1,-80.2,40.2,-80.1,0"], HEADER, "column 'hour', row 2 (line 3): '14.5' is not an integer"),
        (GOOD[:1] + ["5,bitcoin,14,40,1200,40.1,-80.2,40.2,-80.1,0"], HEADER, "column 'category', row 2 (line 3): 'bitcoin' is not in the vocabulary"),
        (GOOD[:1] + ["-5,home,14,40,1200,40.1,-80.2,40.2,-80.1,0"], HEADER, "column 'amt', row 2 (line 3): -5 is outside [0.0, None]"),
        (GOOD + ["5,home,14,40,1200,40.1,-80.2,40.2,-80.1,2"], HEADER, "column 'is_fraud', row 4 (line 5): '2' is a third class"),
        ([r[:-1] + "0" for r in GOOD], HEADER, "no row has the positive class '1'"),
        ([r[:-1] + "1" for r in GOOD], HEADER, "every row is '1'"),
    ], ids=["empty", "missing column", "ragged row", "extra column", "not a number", "empty cell", "NaN cell", "not an integer",
            "unknown category", "below min", "third class", "no positives", "one class"])
    def test_every_bad_file_names_file_column_and_row(self, tmp_path, rows, header, expected):
        path = write(tmp_path, rows, header)
        with pytest.raises(DataError) as err:
            load_table(spec_for(path).data)
        assert str(err.value).startswith(f"file://{path}: ") and expected in str(err.value), str(err.value)

    def test_an_empty_file(self, tmp_path):
        path = tmp_path / "empty.csv"
        path.write_text("")
        with pytest.raises(DataError, match="the file is empty"):
            load_table(spec_for(path).data)

    def test_impute_median_fills_empty_cells_of_that_feature_only(self, tmp_path):
        s = json.loads(json.dumps(FRAUD))
        s["data"]["features"][0]["missing"] = "impute-median"
        path = write(tmp_path, GOOD + [",home,14,40,1200,40.1,-80.2,40.2,-80.1,0"])
        s["data"]["source"] = f"file://{path}"
        table = load_table(parse_spec(s).data)
        assert table.x[3, 0] == pytest.approx(np.median([12.5, 980.0, 33.0])) and table.imputed == {"amt": 33.0}

    def test_the_trainer_exits_2_with_the_message(self, tmp_path, keys):
        from hardened_trainer.__main__ import main
        from helpers import write_config

        doc = example("fraud-tabular")
        doc["spec"]["data"]["source"] = f"file://{write(tmp_path, GOOD[:1] + ['x,home,1,40,1,1,1,1,1,0'])}"
        cfg = write_config(tmp_path, doc, keys[0])
        term = tmp_path / "term"
        assert main(["--config", str(cfg), "--termination-log", str(term)]) == 2
        assert "column 'amt', row 2 (line 3): 'x' is not a number" in json.loads(term.read_text())["message"]


def test_an_array_that_is_not_pixels_is_refused_never_rescaled(tmp_path):
    """Issue 15: five transaction rows in an .npz were divided by 255 and clipped, silently."""
    path = tmp_path / "rows.npz"
    np.savez(path, x=np.array([[281.0, 40.1, -80.2, 40.0, -80.0], [1077.0, 35.0, -100.0, 36.1, -99.0]]),
             y=np.array([0, 1]))
    with pytest.raises(DataError, match=r"values span -100\.\.1077; image data is pixels .* spec.data.format: tabular"):
        load_dataset(f"file://{path}")
    ok = tmp_path / "pixels.npz"
    np.savez(ok, x=np.array([[[0, 128], [255, 3]]], np.uint8), y=np.array([1]))
    assert load_dataset(f"file://{ok}").x.max() == 1.0  # whole-number pixels 0-255 are images


# ------------------------------------------------------------------ model
def test_the_model_standardizes_and_one_hot_encodes_inside_itself():
    from hardened_model.networks import build_model
    from opacus.validators import ModuleValidator

    features = [{"name": "amt", "type": "number"}, {"name": "c", "type": "category", "vocabulary": ["a", "b", "c"]},
                {"name": "h", "type": "integer"}]
    model = build_model("tabular-mlp", [3], 2, mean=[10.0, 5.0], std=[2.0, 1.0], features=features)
    pre = model[0]
    out = pre(torch.tensor([[12.0, 2.0, 4.0], [10.0, 0.0, 5.0]]))
    assert out.tolist() == [[1.0, -1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0, 0.0]]
    assert ModuleValidator.validate(model, strict=False) == []
    assert {"0.mean", "0.std"} <= set(model.state_dict())  # statistics travel with the weights
    with pytest.raises(ValueError, match="one feature description per input column"):
        build_model("tabular-mlp", [4], 2, features=features)


# ------------------------------------------------------------------ attacks
@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A tabular model fitted briefly on 3,000 synthetic rows, its data and constraints."""
    import importlib.machinery
    import importlib.util

    from hardened_trainer.train import train

    loader = importlib.machinery.SourceFileLoader("make_transactions", str(ROOT / "scripts/make-transactions"))
    gen = importlib.util.module_from_spec(importlib.util.spec_from_loader("make_transactions", loader))
    loader.exec_module(gen)
    path = tmp_path_factory.mktemp("tx") / "tx.csv"
    gen.write(gen.make(3000, seed=1, fraud_rate=0.05), path)
    s = json.loads(json.dumps(FRAUD))
    s["data"]["source"] = f"file://{path}"
    s["training"].update(epochs=3, privacy={"enabled": False}, batchSize=256)
    s["gates"] = {}
    spec = parse_spec(s)
    table = load_table(spec.data)
    result = train(spec, table.x, table.y, device=torch.device("cpu"), log=lambda *a, **k: None)
    return spec, result.model, table, constraints(spec.data.features, table.x)


def _check_constraints(x, x_adv, cons, eps):
    moved = np.abs(x_adv - x)
    assert (moved[:, cons.mask == 0] == 0).all(), "an immutable feature moved"
    assert (moved <= cons.radius(eps) + 1e-3).all(), "a feature moved beyond its radius"
    assert (x_adv[:, cons.integer] == np.rint(x_adv[:, cons.integer])).all(), "an integer is not whole"
    assert (x_adv >= np.minimum(cons.low, x) - 1e-4).all() and (x_adv <= np.maximum(cons.high, x) + 1e-4).all()
    assert moved[:, cons.mask == 1].max() > 0, "the attack moved nothing"


def test_the_training_attack_respects_every_constraint(fitted):
    from hardened_trainer import attacks

    spec, model, table, cons = fitted
    x, y = table.x[:400], table.y[:400]
    eps = 0.5
    x_adv = attacks.pgd(model, torch.from_numpy(x), torch.from_numpy(y), eps=torch.from_numpy(cons.radius(eps)),
                        eps_step=torch.from_numpy(cons.radius(eps / 4)), max_iter=5,
                        clip=(torch.from_numpy(cons.low), torch.from_numpy(cons.high)),
                        integer=torch.from_numpy(cons.integer)).numpy()
    _check_constraints(x, x_adv, cons, eps)
    assert spec.data.features[2].name == "hour" and np.abs(x_adv[:, 2] - x[:, 2]).max() >= 1  # hours move whole


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_art_with_a_mask_respects_every_constraint(fitted, attack):
    from hardened_trainer.evaluate import adversarial_examples

    spec, model, table, cons = fitted
    x, y = table.x[:300], table.y[:300]
    x_adv = adversarial_examples(model, x, y, attack, eps=0.5, pgd_iter=5, input_shape=[9], num_classes=2,
                                 cons=cons)
    _check_constraints(x, x_adv, cons, 0.5)


def test_positive_class_metrics_and_their_gates(fitted):
    from hardened_trainer.evaluate import positive_class_metrics

    spec, model, table, cons = fitted
    figures = positive_class_metrics(model, table.x, table.y, spec, cons)
    assert figures["positives"] == int(table.y.sum()) and figures["confusionMatrix"][1][1] + \
        figures["confusionMatrix"][1][0] == figures["positives"]
    assert 0 < figures["recall"] <= 1 and 0 < figures["prAUC"] <= 1
    assert figures["robustRecall"] <= figures["recall"] + 1e-9  # the attack never helps
    gates = parse_spec({**json.loads(json.dumps(FRAUD)), "gates": {"minRecall": 0.3}}).gates
    figures["cleanAccuracy"] = 0.95  # measured by evaluate(), beside these
    assert all(g.passed for g in check_gates(figures, gates)), check_gates(figures, gates)
    # a model that always answers "not fraud" is 99.6% accurate and fails the recall gate
    never = {**figures, "recall": 0.0, "cleanAccuracy": 0.996}
    assert [(g.gate, g.passed) for g in check_gates(never, gates)] == [("minCleanAccuracy", True),
                                                                       ("minRecall", False)]


def test_real_data_breast_cancer_from_a_csv(tmp_path, keys):
    """The second check, on real data that scikit-learn ships (569 tumours, 30 measurements): the whole
    trainer from a CSV file, DP-SGD included, with the positive class malignant."""
    from sklearn.datasets import load_breast_cancer

    from hardened_trainer.__main__ import main
    from helpers import write_config

    bc = load_breast_cancer()
    names = [n.replace(" ", "_") for n in bc.feature_names]
    path = tmp_path / "breast-cancer.csv"
    rows = [",".join(f"{v:.6g}" for v in x) + f",{bc.target_names[y]}" for x, y in zip(bc.data, bc.target)]
    path.write_text(",".join(names + ["diagnosis"]) + "\n" + "\n".join(rows) + "\n")
    doc = example("fraud-tabular")
    s = doc["spec"]
    s["model"] = {"architecture": "tabular-mlp", "inputShape": [30], "numClasses": 2, "labels": ["benign", "malignant"]}
    s["data"].update(source=f"file://{path}", label="diagnosis", positiveClass="malignant",
                     features=[{"name": n, "type": "number", "min": 0} for n in names])
    s["training"].update(batchSize=64, epochs=30, learningRate=0.01,
                         privacy={"enabled": True, "targetEpsilon": 8.0, "targetDelta": 1e-3, "maxGradNorm": 1.0})
    s["training"]["adversarial"]["eps"] = 0.1
    s["evaluation"].update(eps=0.1, maxSamples=200)
    s["gates"] = {"minRecall": 0.85, "minPRAUC": 0.9, "maxEpsilon": 8.0}
    cfg = write_config(tmp_path, doc, keys[0])
    assert main(["--config", str(cfg), "--termination-log", str(tmp_path / "term")]) == 0
    metrics = json.loads((tmp_path / "out/model/metrics.json").read_text())
    assert metrics["recall"] >= 0.85 and metrics["prAUC"] >= 0.9 and metrics["epsilon"] <= 8.0, metrics
    assert metrics["positiveClass"]["positives"] == 53  # 212 malignant, 25% held out, stratified
    print({k: round(metrics[k], 3) for k in ("recall", "precision", "prAUC", "robustRecall", "epsilon")})


def test_csv_and_parquet_from_s3(tmp_path, moto_server):
    """s3:// sources, through a real S3 API (moto's server): the same table as from a local file."""
    import boto3
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    s3.create_bucket(Bucket="tabular-data")
    csv = write(tmp_path, GOOD)
    pq.write_table(pacsv.read_csv(csv), tmp_path / "t.parquet")
    s3.upload_file(str(csv), "tabular-data", "fraud/t.csv")
    s3.upload_file(str(tmp_path / "t.parquet"), "tabular-data", "fraud/t.parquet")
    local = load_table(spec_for(csv).data)
    for key in ("fraud/t.csv", "fraud/t.parquet"):
        s = json.loads(json.dumps(FRAUD))
        s["data"]["source"] = f"s3://tabular-data/{key}"
        table = load_table(parse_spec(s).data, s3_client=s3)
        assert np.array_equal(table.x, local.x) and np.array_equal(table.y, local.y)
    s["data"]["source"] = "s3://tabular-data/fraud/missing.csv"
    with pytest.raises(DataError, match="s3://tabular-data/fraud/missing.csv: S3 error NoSuchKey"):
        load_table(parse_spec(s).data, s3_client=s3)
