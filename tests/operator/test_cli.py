"""The `hardened-model` entry point: crd and validate."""
import subprocess
import sys

from helpers import ROOT
from hardened_operator.cli import EXIT_BAD_INPUT, main


def test_crd_prints_the_committed_crd(capsys):
    assert main(["crd"]) == 0
    assert capsys.readouterr().out == (ROOT / "crds/hardenedmodels.hardened.dev.yaml").read_text()


def test_validate_accepts_the_examples(capsys):
    files = sorted(str(p) for p in (ROOT / "examples").glob("*.yaml"))
    assert main(["validate", *files]) == 0
    assert capsys.readouterr().out.count("valid HardenedModel") == len(files)


def test_validate_names_field_and_value(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "examples/digits-demo.yaml").read_text().replace("epochs: 20", "epochs: -3"))
    assert main(["validate", str(bad)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"{bad}: spec.training.epochs: Invalid value: -3: spec.training.epochs in body should be greater than or equal to 1" in err


def test_validate_missing_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == EXIT_BAD_INPUT
    assert "cannot read: No such file or directory" in capsys.readouterr().err


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "hardened_operator.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "validate" in out.stdout
