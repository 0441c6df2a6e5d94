"""model.initialWeights (issue 17): start hardening from a pinned safetensors file; a wrong pin, a pickle and
a file for another architecture stop the trainer with exit 2 and a message naming the field."""
import hashlib
import json
import pathlib

import pytest
import safetensors.torch
import torch

from hardened_model.signing import TrustPolicy, verify_model
from hardened_model.spec import SpecError, parse_manifest
from hardened_trainer.__main__ import EXIT_BAD_CONFIG, EXIT_OK, main
from hardened_model.networks import build_model
from helpers import tiny_manifest, write_config

PLAIN = {"training": {"epochs": 1, "learningRate": 1e-7, "optimizer": "sgd",
                      "adversarial": {"enabled": False}, "privacy": {"enabled": False}},
         "evaluation": {"membershipInference": False}, "gates": {"maxEpsilon": None, "maxMembershipAUC": None}}


def baseline(path: pathlib.Path, *, seed: int = 123, architecture="cnn-8x8") -> tuple[dict, str]:
    """A network's full state (random init under ``seed``) saved as safetensors: (tensors, sha256)."""
    torch.manual_seed(seed)
    net = build_model(architecture, [1, 8, 8], 10, mean=0.5, std=0.25, check_dp=False)
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(state, str(path))
    return state, hashlib.sha256(path.read_bytes()).hexdigest()


def run(tmp, doc, keys, capsys, **kwargs):
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = write_config(tmp, doc, keys[0], **kwargs)
    code = main(["--config", str(cfg), "--termination-log", str(tmp / "termination-log")])
    return code, [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def trained(tmp) -> dict:
    return safetensors.torch.load_file(str(tmp / "out/model/model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_a_warm_start_begins_from_the_pinned_file_and_the_signed_model_json_says_so(tmp_path, keys, capsys):
    state, sha = baseline(tmp_path / "baseline.safetensors")
    warm = tiny_manifest({**PLAIN, "model": {"initialWeights": {"uri": f"file://{tmp_path}/baseline.safetensors",
                                                                "sha256": sha}}})
    code, lines = run(tmp_path / "warm", warm, keys, capsys)
    assert code == EXIT_OK, lines[-3:]
    loaded = next(x for x in lines if x["event"] == "initial-weights")
    assert loaded["tensors"] == len(state) and loaded["sha256"] == sha
    # with a learning rate of 1e-7 one epoch barely moves the weights: they are the file's
    assert max_diff(trained(tmp_path / "warm"), state) < 1e-4
    model_json = json.loads((tmp_path / "warm/out/model/model.json").read_text())
    assert model_json["initialWeights"] == {"uri": f"file://{tmp_path}/baseline.safetensors", "sha256": sha}
    verified = verify_model(tmp_path / "warm/out/model", tmp_path / "warm/out/model.sig",
                            TrustPolicy(public_key=keys[1]))
    assert verified.digest  # model.json (with the pin) is covered by the signature
    code, _ = run(tmp_path / "cold", tiny_manifest(PLAIN), keys, capsys)
    assert code == EXIT_OK and max_diff(trained(tmp_path / "cold"), state) > 0.01  # a cold start is elsewhere


def test_a_pvc_uri_is_read_through_the_mounted_claim(tmp_path, keys, capsys):
    state, sha = baseline(tmp_path / "claims/baselines/digits/v1.safetensors")
    doc = tiny_manifest({**PLAIN, "model": {"initialWeights": {"uri": "pvc://baselines/digits/v1.safetensors",
                                                               "sha256": sha}}})
    code, lines = run(tmp_path, doc, keys, capsys, volumes={"baselines": str(tmp_path / "claims/baselines")})
    assert code == EXIT_OK, lines[-3:]
    assert max_diff(trained(tmp_path), state) < 1e-4


def test_a_wrong_sha256_stops_the_trainer_before_training(tmp_path, keys, capsys):
    _, sha = baseline(tmp_path / "baseline.safetensors")
    wrong = "0" * 64
    doc = tiny_manifest({**PLAIN, "model": {"initialWeights": {"uri": f"file://{tmp_path}/baseline.safetensors",
                                                               "sha256": wrong}}})
    code, lines = run(tmp_path, doc, keys, capsys)
    assert code == EXIT_BAD_CONFIG
    assert lines[-1]["stage"] == "data" and lines[-1]["message"] == (
        f"model.initialWeights.sha256: file://{tmp_path}/baseline.safetensors has sha256 {sha}, the spec pins "
        f"{wrong}; the file changed or the pin is wrong")
    assert not any(x["event"] == "epoch" for x in lines)


def test_pickles_are_refused_by_name_in_the_spec_and_by_content_in_the_trainer(tmp_path, keys, capsys):
    doc = tiny_manifest({"model": {"initialWeights": {"uri": "s3://models/baseline.pt", "sha256": "a" * 64}}})
    with pytest.raises(SpecError, match=r"spec.model.initialWeights.uri: .*never loaded here: convert once.*"
                                        r"safetensors.torch.save_file\(torch.load\(PATH, weights_only=True\)"):
        parse_manifest(doc)
    disguised = tmp_path / "baseline.safetensors"  # torch.save's zip under a safetensors name
    torch.save(build_model("cnn-8x8", [1, 8, 8], 10, check_dp=False).state_dict(), str(disguised))
    sha = hashlib.sha256(disguised.read_bytes()).hexdigest()
    doc = tiny_manifest({**PLAIN, "model": {"initialWeights": {"uri": f"file://{disguised}", "sha256": sha}}})
    code, lines = run(tmp_path, doc, keys, capsys)
    assert code == EXIT_BAD_CONFIG
    assert lines[-1]["message"].startswith(f"model.initialWeights.uri: file://{disguised} is a pickle, not "
                                           f"safetensors. PyTorch .pt/.pth files are pickles")


def test_a_file_for_another_architecture_names_the_tensors(tmp_path, keys, capsys):
    _, sha = baseline(tmp_path / "mlp.safetensors", architecture="mlp")
    doc = tiny_manifest({**PLAIN, "model": {"initialWeights": {"uri": f"file://{tmp_path}/mlp.safetensors",
                                                               "sha256": sha}}})
    code, lines = run(tmp_path, doc, keys, capsys)
    assert code == EXIT_BAD_CONFIG
    message = lines[-1]["message"]
    assert message.startswith(f"model.initialWeights.uri: file://{tmp_path}/mlp.safetensors does not fit "
                              f"model.architecture: missing ")
    assert "not in the network" in message


def test_an_s3_uri_is_downloaded_with_the_stores_client(tmp_path, keys, capsys, moto_server):
    import boto3

    state, sha = baseline(tmp_path / "baseline.safetensors")
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    s3.create_bucket(Bucket="baselines")
    s3.put_object(Bucket="baselines", Key="digits/v1.safetensors", Body=(tmp_path / "baseline.safetensors").read_bytes())
    doc = tiny_manifest({**PLAIN, "model": {"initialWeights": {"uri": "s3://baselines/digits/v1.safetensors",
                                                               "sha256": sha}},
                         "artifacts": {"store": "s3://baselines/hardened", "region": "us-east-1",
                                       "endpoint": moto_server}})
    code, lines = run(tmp_path / "run", doc, keys, capsys)
    assert code == EXIT_OK, lines[-3:]
    assert max_diff(trained(tmp_path / "run"), state) < 1e-4
    doc["spec"]["model"]["initialWeights"]["uri"] = "s3://baselines/digits/absent.safetensors"
    code, lines = run(tmp_path / "absent", doc, keys, capsys)
    assert code == EXIT_BAD_CONFIG
    assert lines[-1]["message"].startswith("model.initialWeights.uri: cannot read s3://baselines/digits/absent.safetensors")
