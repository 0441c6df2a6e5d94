"""Bring your own model (issue 17): examples/plugins/acme-archs, installed the way its derived-image Dockerfile
does it (pip --no-deps --target, then PYTHONPATH), registers two architectures through entry points; a spec
naming one trains, signs, verifies and serves with `hardened-model up`; where it is not installed, validate,
the trainer and the server each say so."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from hardened_model.architectures import ArchitectureError, installed
from helpers import ROOT, Process, free_port, http, infer_body, tiny_manifest

PLUGIN = ROOT / "examples/plugins/acme-archs"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    src = tmp_path_factory.mktemp("plugin-src") / "acme-archs"
    shutil.copytree(PLUGIN, src)  # the build writes egg-info next to the sources: not in the repository
    target = tmp_path_factory.mktemp("plugins")
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--target", str(target), str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return target


def test_the_plugin_registers_its_architectures_through_entry_points(plugin_path, monkeypatch):
    from hardened_model.networks import build_model

    assert "acme-small-cnn" not in installed()
    monkeypatch.syspath_prepend(str(plugin_path))
    found = installed()
    assert found["acme-small-cnn"] == "acme-hardened-archs (acme_archs:small_cnn)"
    assert found["cnn-8x8"] == "built-in"
    net = build_model("acme-small-cnn", [1, 8, 8], 10, options={"width": 8})  # Opacus-valid as it is
    assert net(__import__("torch").zeros(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ArchitectureError, match=r"^model.options: architecture 'acme-small-cnn' refused them: "
                                                r"width must be a multiple of 4 from 4 to 256, got 3$"):
        build_model("acme-small-cnn", [1, 8, 8], 10, options={"width": 3})
    with pytest.raises(ArchitectureError, match=r"model.options: .* unexpected keyword argument 'depth'"):
        build_model("acme-small-cnn", [1, 8, 8], 10, options={"depth": 2})


def test_batchnorm_is_named_and_auto_fix_replaces_it_as_opacus_does(plugin_path, monkeypatch):
    from opacus.validators import ModuleValidator

    from hardened_model.architectures import builder
    from hardened_model.networks import build_model, replace_batchnorm

    monkeypatch.syspath_prepend(str(plugin_path))
    with pytest.raises(ArchitectureError) as err:
        build_model("acme-bn-cnn", [1, 8, 8], 10)
    assert str(err.value) == (
        "model.architecture: 'acme-bn-cnn' cannot be trained with DP-SGD (Opacus): layer 1.1 (BatchNorm2d): "
        "BatchNorm cannot support training with differential privacy: use GroupNorm instead, or set "
        "model.autoFix: true to replace it; layer 1.4 (BatchNorm2d): BatchNorm cannot support training with "
        "differential privacy: use GroupNorm instead, or set model.autoFix: true to replace it")
    fixed = build_model("acme-bn-cnn", [1, 8, 8], 10, auto_fix=True)
    assert ModuleValidator.is_valid(fixed)
    # the server has no Opacus: its replacement must be the very network Opacus' fix makes
    raw = builder("acme-bn-cnn")([1, 8, 8], 10)
    by_opacus = ModuleValidator.fix(raw)
    assert replace_batchnorm(raw) == ["1", "4"]
    assert str(raw) == str(by_opacus)
    assert [tuple(p.shape) for p in raw.parameters()] == [tuple(p.shape) for p in by_opacus.parameters()]


def cli(*args, cwd, env=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "hardened_operator.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.slow
@pytest.mark.server
def test_up_trains_signs_verifies_and_serves_a_plugin_architecture(plugin_path, tmp_path):
    doc = tiny_manifest({"model": {"architecture": "acme-bn-cnn", "options": {"width": 8}, "autoFix": True}})
    spec = tmp_path / "model.yaml"
    spec.write_text(yaml.safe_dump(doc))
    with_plugin = {"PYTHONPATH": str(plugin_path)}
    # not installed: validate and up say so before anything runs
    out = cli("validate", str(spec), cwd=tmp_path)
    assert out.returncode == 2
    assert f"{spec}: spec.model.architecture: Unsupported value: 'acme-bn-cnn': architecture 'acme-bn-cnn' is " \
           f"not installed here" in out.stderr and "hardened_model.architectures" in out.stderr
    assert cli("up", str(spec), "--detach", cwd=tmp_path).returncode == 2
    assert cli("validate", str(spec), cwd=tmp_path, env=with_plugin).returncode == 0
    port = free_port()
    out = cli("up", str(spec), "--detach", "--port", str(port), cwd=tmp_path, env=with_plugin)
    assert out.returncode == 0, out.stdout + out.stderr
    try:
        from sklearn.datasets import load_digits

        key = (tmp_path / ".hardened/digits-demo/api-keys").read_text().split()[0]
        x = (load_digits().images[:2] / 16.0).reshape(2, 1, 8, 8)
        status, body, _ = http("POST", f"http://127.0.0.1:{port}/v2/models/digits-demo/infer", infer_body(x),
                               {"Authorization": f"Bearer {key}"})
        assert status == 200 and body["outputs"][0]["shape"] == [2, 10], body
        version_dir = next((tmp_path / ".hardened/volumes/hardened-models/digits-demo").iterdir())
        model_json = json.loads((version_dir / "model/model.json").read_text())
        assert model_json["architecture"] == "acme-bn-cnn" and model_json["options"] == {"width": 8}
        assert model_json["autoFix"] is True
        # a server image without the plugin refuses the (verified) model with a clear error
        server = Process("serve", "--artifact", str(version_dir), "--public-key",
                         str(tmp_path / ".hardened/secrets/digits-demo-signing/public.pem"), "--port",
                         str(free_port()), "--metrics-port", str(free_port()), log=tmp_path / "serve.log")
        assert server.wait() == 3
        assert "architecture 'acme-bn-cnn' is not installed here" in server.output()
    finally:
        cli("down", str(spec), cwd=tmp_path, env=with_plugin)


def test_the_derived_image_installs_the_plugin_the_way_the_test_does():
    """The Dockerfile next to the plugin: dependencies from the base image, the plugin on PYTHONPATH."""
    text = (PLUGIN / "Dockerfile").read_text()
    assert "FROM ${BASE_IMAGE}" in text and "ENV PYTHONPATH=/opt/plugins" in text
    assert "pip install --no-cache-dir --no-deps --target /opt/plugins /src" in text


def test_the_trainer_names_an_uninstalled_or_batchnorm_architecture_and_exits_2(tmp_path, keys, capsys, plugin_path,
                                                                                monkeypatch):
    from hardened_trainer.__main__ import EXIT_BAD_CONFIG, main
    from helpers import write_config

    def train(doc, folder):
        folder.mkdir()
        code = main(["--config", str(write_config(folder, doc, keys[0]))])
        return code, [json.loads(line) for line in capsys.readouterr().out.splitlines()][-1]

    code, last = train(tiny_manifest({"model": {"architecture": "acme-small-cnn"}}), tmp_path / "missing")
    assert code == EXIT_BAD_CONFIG and last["stage"] == "model"
    assert last["message"].startswith("architecture 'acme-small-cnn' is not installed here")
    monkeypatch.syspath_prepend(str(plugin_path))
    code, last = train(tiny_manifest({"model": {"architecture": "acme-bn-cnn"}}), tmp_path / "batchnorm")
    assert code == EXIT_BAD_CONFIG and last["stage"] == "model"
    assert "layer 1.1 (BatchNorm2d)" in last["message"] and "model.autoFix: true" in last["message"]
