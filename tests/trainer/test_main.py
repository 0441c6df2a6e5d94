"""The trainer end to end: config -> trained, evaluated, signed, uploaded artifact; exit codes."""
import json
import pathlib
import shutil

import boto3
import pytest

from hardened_model.contracts import build_trainer_config, training_version
from hardened_model.signing import TrustPolicy, verify_model
from hardened_model.spec import parse_manifest
from hardened_trainer.__main__ import EXIT_BAD_CONFIG, EXIT_GATES_FAILED, EXIT_OK, main
from hardened_trainer.config import ConfigError, parse_config
from helpers import EXAMPLES, example, tiny_manifest, write_config


def run_trainer(tmp: pathlib.Path, doc: dict, private_key, capsys=None, **kwargs):
    cfg = write_config(tmp, doc, private_key, **kwargs)
    code = main(["--config", str(cfg), "--termination-log", str(tmp / "termination-log")])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()] if capsys else []
    return code, lines


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, keys):
    tmp = tmp_path_factory.mktemp("train")
    code, _ = run_trainer(tmp, tiny_manifest(), keys[0])
    assert code == EXIT_OK
    return tmp


class TestArtifact:
    def test_directory_layout(self, artifact):
        assert sorted(p.name for p in (artifact / "out/model").iterdir()) == [
            "metrics.json", "model.json", "model.safetensors", "provenance.json", "report.html"]
        assert (artifact / "out/model.sig").is_file()

    def test_model_json_records_architecture_normalization_and_digests(self, artifact):
        meta = json.loads((artifact / "out/model/model.json").read_text())
        assert meta["architecture"] == "cnn-8x8" and meta["inputShape"] == [1, 8, 8]
        assert meta["labels"] == [str(i) for i in range(10)]
        assert 0 < meta["normalization"]["mean"] < 1 and meta["normalization"]["std"] > 0
        assert meta["input"] == {"range": [0.0, 1.0], "rawScale": 16.0}
        assert len(meta["configDigest"]) == 64
        assert meta["version"] == meta["trainingDigest"] == training_version(parse_manifest(tiny_manifest()).spec)

    def test_metrics_json_has_every_figure_and_the_gate_verdict(self, artifact):
        m = json.loads((artifact / "out/model/metrics.json").read_text())
        assert 0 <= m["cleanAccuracy"] <= 1 and 0 <= m["robustAccuracy"] <= m["cleanAccuracy"] + 0.05
        assert 0 < m["epsilon"] <= 8.0 and m["delta"] == 1e-5
        assert set(m["attackAccuracy"]) == {"fgsm", "pgd"}
        assert 0 <= m["membershipAUC"] <= 1 and m["membershipInferenceAttack"].startswith("loss-threshold")
        assert m["gatesPassed"] is True and {g["gate"] for g in m["gates"]} == {
            "minCleanAccuracy", "minRobustAccuracy", "maxEpsilon", "maxMembershipAUC"}
        assert len(m["history"]) == 2 and len(m["perClassAccuracy"]) == 10
        # how the model was made, as the model card shows it: the clipper, and no weight average unless asked
        assert m["clipping"] == "fast" and m["weightAverageDecay"] is None

    def test_weights_are_safetensors_not_pickle(self, artifact):
        import safetensors

        blob = (artifact / "out/model/model.safetensors").read_bytes()
        assert not blob.startswith(b"\x80") and b"PK" != blob[:2]  # neither a pickle nor a torch zip
        with safetensors.safe_open(str(artifact / "out/model/model.safetensors"), "pt") as f:
            assert "0.mean" in f.keys() and f.metadata()["architecture"] == "cnn-8x8"

    def test_report_has_the_plots(self, artifact):
        html = (artifact / "out/model/report.html").read_text()
        for plot in ("accuracy-vs-eps", "epsilon", "mia-roc"):
            assert f"id='plot-{plot}' src='data:image/png;base64," in html
        assert 'id="verdict">PASSED' in html

    def test_signature_verifies_with_the_public_key(self, artifact, keys):
        res = verify_model(artifact / "out/model", artifact / "out/model.sig", TrustPolicy(public_key=str(keys[1])))
        assert res.verified, res.reason
        term = json.loads((artifact / "termination-log").read_text())
        assert term["digest"] == res.digest and term["gatesPassed"] is True
        assert term["uri"].startswith("pvc://hardened-models/digits-demo/")


@pytest.mark.parametrize("tamper", ["model.safetensors", "model.json", "metrics.json", "report.html", "add", "remove"])
def test_tampering_any_file_fails_verification(artifact, keys, tmp_path, tamper):
    copy = tmp_path / "v"
    shutil.copytree(artifact / "out", copy)
    model = copy / "model"
    if tamper == "add":
        (model / "extra.bin").write_bytes(b"\0")
    elif tamper == "remove":
        (model / "report.html").unlink()
    else:
        blob = bytearray((model / tamper).read_bytes())
        blob[len(blob) // 2] ^= 0x01  # one bit
        (model / tamper).write_bytes(bytes(blob))
    res = verify_model(model, copy / "model.sig", TrustPolicy(public_key=str(keys[1])))
    assert not res.verified
    if tamper not in ("add", "remove"):
        assert res.reason == f"files changed after signing (sha256 mismatch): {tamper}"


def test_gate_failure_exits_3_and_still_writes_the_signed_verdict(tmp_path, keys, capsys):
    code, lines = run_trainer(tmp_path, tiny_manifest({"gates": {"minCleanAccuracy": 0.999}}), keys[0], capsys)
    assert code == EXIT_GATES_FAILED
    result = lines[-1]
    assert result["event"] == "result" and result["gatesPassed"] is False
    metrics = json.loads((tmp_path / "out/model/metrics.json").read_text())
    assert metrics["gatesPassed"] is False
    assert [g["passed"] for g in metrics["gates"] if g["gate"] == "minCleanAccuracy"] == [False]


def test_json_log_lines(tmp_path, keys, capsys):
    _, lines = run_trainer(tmp_path, tiny_manifest(), keys[0], capsys)
    events = [line["event"] for line in lines]
    assert events == ["start", "data-digest", "sanitized", "privacy", "epoch", "epoch", "evaluated", "result"]
    assert all(set(line) >= {"loss", "accuracy", "epsilon"} for line in lines if line["event"] == "epoch")


def test_bad_config_exits_2_naming_the_field(tmp_path, capsys):
    cfg = build_trainer_config(parse_manifest(tiny_manifest()), output_dir=str(tmp_path / "o"),
                               private_key_path="/k.pem")
    cfg["spec"]["training"]["epochs"] = 0
    cfg["version"] = "XYZ"
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    code = main(["--config", str(tmp_path / "c.json"), "--termination-log", str(tmp_path / "t")])
    assert code == EXIT_BAD_CONFIG
    errors = {e["field"]: e["message"] for e in map(json.loads, capsys.readouterr().out.splitlines())}
    assert "Input should be greater than or equal to 1" in errors["config.spec.training.epochs"]
    assert "'XYZ'" in errors["config.version"]
    assert json.loads((tmp_path / "t").read_text())["reason"] == "BadConfig"


def test_missing_key_is_a_signing_error(tmp_path, capsys):
    code, lines = run_trainer(tmp_path, tiny_manifest(), tmp_path / "absent.pem", capsys)
    assert code == EXIT_BAD_CONFIG
    assert lines[-1]["event"] == "error" and lines[-1]["stage"] == "signing"


def test_data_error_exits_2(tmp_path, keys, capsys):
    doc = tiny_manifest({"data": {"source": "file:///nonexistent/mnist"}})
    code, lines = run_trainer(tmp_path, doc, keys[0], capsys)
    assert code == EXIT_BAD_CONFIG
    assert lines[-1] == {"event": "error", "stage": "data",
                         "message": "file:///nonexistent/mnist: no such file or folder"}


def test_clipping_fast_on_a_layer_without_a_fast_path_stops_before_the_data(tmp_path, keys, capsys, monkeypatch):
    """The trainer asks choose_clipping before reading data: exit 2, stage model, the layers named."""
    import hardened_trainer.clipping

    monkeypatch.setattr(hardened_trainer.clipping, "unsupported_layers", lambda module: ["3 (Scale)"])
    doc = tiny_manifest({"data": {"source": "file:///nonexistent/mnist"},
                         "training": {"privacy": {"clipping": "fast"}}})
    code, lines = run_trainer(tmp_path, doc, keys[0], capsys)
    assert code == EXIT_BAD_CONFIG
    assert lines[-1] == {"event": "error", "stage": "model", "message": "spec.training.privacy.clipping: fast "
                         "does not support layers ['3 (Scale)']: use ghost or hooks (or leave it out)"}


class TestConfigContract:
    @pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
    def test_operator_config_for_every_example_parses_in_the_trainer(self, path):
        doc = example(path.stem)
        cfg = build_trainer_config(parse_manifest(doc), output_dir="/artifacts/x", private_key_path="/k/private.pem")
        parsed = parse_config(json.loads(json.dumps(cfg)))
        assert parsed.spec == parse_manifest(doc).spec
        assert parsed.version == training_version(parsed.spec)

    def test_unknown_and_missing_fields(self):
        with pytest.raises(ConfigError) as err:
            parse_config({"apiVersion": "hardened.dev/trainer-config/v2", "extra": 1})
        fields = dict(err.value.problems)
        assert set(fields) >= {"config.apiVersion", "config.extra", "config.modelName", "config.spec",
                               "config.outputDir", "config.version"}
        assert fields["config.extra"] == "unknown field"

    def test_key_signing_needs_a_key_path(self):
        cfg = build_trainer_config(parse_manifest(tiny_manifest()), output_dir="/o")
        with pytest.raises(ConfigError, match=r"config.signing.privateKeyPath: Required value"):
            parse_config(cfg)

    def test_serving_change_keeps_the_version_training_change_moves_it(self):
        base = parse_manifest(tiny_manifest()).spec
        serving = parse_manifest(tiny_manifest({"serving": {"replicas": 4}})).spec
        training = parse_manifest(tiny_manifest({"training": {"epochs": 3}})).spec
        assert training_version(base) == training_version(serving) != training_version(training)


@pytest.mark.server
def test_s3_upload_with_kms_and_version_ids(tmp_path, keys, capsys, moto_server):
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    s3.create_bucket(Bucket="models")
    s3.put_bucket_versioning(Bucket="models", VersioningConfiguration={"Status": "Enabled"})
    key_id = boto3.client("kms", endpoint_url=moto_server, region_name="us-east-1").create_key()["KeyMetadata"]["KeyId"]
    doc = tiny_manifest({"artifacts": {"store": "s3://models/hardened", "region": "us-east-1",
                                       "endpoint": moto_server, "kmsKeyId": key_id}})
    code, lines = run_trainer(tmp_path, doc, keys[0], capsys)
    assert code == EXIT_OK
    result = lines[-1]
    version = training_version(parse_manifest(doc).spec)
    prefix = f"hardened/digits-demo/{version}/"
    assert result["uri"] == f"s3://models/{prefix.rstrip('/')}"
    assert sorted(result["versionIds"]) == sorted(prefix + n for n in (
        "model/metrics.json", "model/model.json", "model/model.safetensors", "model/provenance.json",
        "model/report.html", "model.sig"))
    assert all(result["versionIds"].values())
    head = s3.head_object(Bucket="models", Key=prefix + "model/model.safetensors")
    assert head["ServerSideEncryption"] == "aws:kms" and key_id in head["SSEKMSKeyId"]

    from hardened_model.artifacts import StoreURI, download_version
    dest = download_version(StoreURI.parse("s3://models/hardened"), "digits-demo", version, tmp_path / "dl",
                            client=s3, version_ids=result["versionIds"])
    assert verify_model(dest / "model", dest / "model.sig", TrustPolicy(public_key=str(keys[1]))).verified


EPHEMERAL = {"signing": {"method": "ephemeral", "privateKeySecret": None, "publicKeySecret": None}}


def test_ephemeral_signing_reports_the_run_key_and_writes_no_private_key(tmp_path, capsys):
    """signing.method ephemeral (issue 27): the trainer makes a key for this run, signs in memory and reports
    the public half in its termination message; the model verifies with that key and with no other, and no
    private key is left in any file the run wrote."""
    from hardened_model.signing import generate_key_pem

    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps(build_trainer_config(parse_manifest(tiny_manifest(EPHEMERAL)),
                                                   output_dir=str(tmp_path / "out"))))
    code = main(["--config", str(cfg), "--termination-log", str(tmp_path / "termination-log")])
    assert code == EXIT_OK
    term = json.loads((tmp_path / "termination-log").read_text())
    key = term["signingKey"]
    assert key.startswith("-----BEGIN PUBLIC KEY-----") and term["gatesPassed"] is True
    out = tmp_path / "out"
    res = verify_model(out / "model", out / "model.sig", TrustPolicy(public_keys_pem=(key,)))
    assert res.verified and res.digest == term["digest"], res.reason
    other = verify_model(out / "model", out / "model.sig", TrustPolicy(public_keys_pem=(generate_key_pem()[1],)))
    assert not other.verified
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and not [p for p in written if b"PRIVATE KEY" in p.read_bytes()]
    result = [json.loads(line) for line in capsys.readouterr().out.splitlines()][-1]
    assert result["event"] == "result" and result["signingKey"] == key


def test_a_termination_message_over_the_kubelets_limit_drops_the_metrics_not_the_json(tmp_path):
    from hardened_trainer.__main__ import TERMINATION_LIMIT, _termination_message

    payload = {"digest": "d" * 64, "signingKey": "k" * 180, "metrics": {f"m{i}": 0.5 for i in range(600)}}
    _termination_message(str(tmp_path / "t"), payload)
    text = (tmp_path / "t").read_text()
    assert len(text.encode()) <= TERMINATION_LIMIT
    assert json.loads(text) == {"digest": "d" * 64, "signingKey": "k" * 180, "metricsDropped": True}
    _termination_message(str(tmp_path / "small"), {"digest": "d", "metrics": {"a": 1}})
    assert json.loads((tmp_path / "small").read_text()) == {"digest": "d", "metrics": {"a": 1}}
