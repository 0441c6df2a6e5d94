"""The `hardened-model` entry point: crd and validate (with --policy, issue 27)."""
import subprocess
import sys

import pytest

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


# ------------------------------------------------------ validate --policy (issue 27)
POLICIES = """\
apiVersion: hardened.dev/v1alpha1
kind: HardenedModelPolicy
metadata: {name: everywhere}
spec:
  gates: {minCleanAccuracy: 0.5}
---
apiVersion: hardened.dev/v1alpha1
kind: HardenedModelPolicy
metadata: {name: tenants}
spec:
  namespaceSelector: {matchLabels: {hardened.dev/tenant: "true"}}
  gates: {minCleanAccuracy: 0.9, maxEpsilon: 3}
  signing: {requireEnforce: true}
"""
DEMO = str(ROOT / "examples/digits-demo.yaml")


def test_crd_policy_prints_the_committed_policy_crd(capsys):
    assert main(["crd", "--policy"]) == 0
    assert capsys.readouterr().out == (ROOT / "crds/hardenedmodelpolicies.hardened.dev.yaml").read_text()


def test_validate_with_a_policy_that_selects_no_label_passes(tmp_path, capsys):
    policies = tmp_path / "policies.yaml"
    policies.write_text(POLICIES)
    assert main(["validate", "--policy", str(policies), DEMO]) == 0
    assert capsys.readouterr().out == f"{DEMO}: valid HardenedModel default/digits-demo\n"


def test_validate_prints_every_violation_of_the_selecting_policies(tmp_path, capsys):
    policies = tmp_path / "policies.yaml"
    policies.write_text(POLICIES)
    code = main(["validate", "--policy", str(policies), "--namespace-labels", "hardened.dev/tenant=true,team=a",
                 DEMO])
    assert code == EXIT_BAD_INPUT
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.splitlines() == [
        f"{DEMO}: HardenedModelPolicy tenants: spec.gates.minCleanAccuracy: 0.8 is below the policy's floor 0.9",
        f"{DEMO}: HardenedModelPolicy tenants: spec.gates.maxEpsilon: 8 is above the policy's ceiling 3",
    ]


def test_validate_still_reports_spec_errors_under_a_policy(tmp_path, capsys):
    policies, bad = tmp_path / "policies.yaml", tmp_path / "bad.yaml"
    policies.write_text(POLICIES)
    bad.write_text((ROOT / "examples/digits-demo.yaml").read_text().replace("epochs: 20", "epochs: -3"))
    assert main(["validate", "--policy", str(policies), str(bad), DEMO]) == EXIT_BAD_INPUT
    out = capsys.readouterr()
    assert f"{bad}: spec.training.epochs: Invalid value: -3" in out.err
    assert out.out == f"{DEMO}: valid HardenedModel default/digits-demo\n"


def test_validate_refuses_a_bad_policy_file_naming_document_and_field(tmp_path, capsys):
    policies = tmp_path / "policies.yaml"
    policies.write_text(POLICIES.replace("maxEpsilon: 3", "maxEpsilon: 300"))
    assert main(["validate", "--policy", str(policies), DEMO]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err == (f"{policies}: document 2: spec.gates.maxEpsilon: Invalid value: 300: "
                                       "spec.gates.maxEpsilon in body should be less than or equal to 100\n")


@pytest.mark.parametrize("content, says", [(b"a: [\n", "Invalid value: not YAML at line 2, column 1: expected the "
                                                            "node content, but found '<stream end>'"),
                                           (b"\xff\xfe", "Invalid value: not UTF-8 text (byte 0)")])
def test_a_file_that_is_not_yaml_is_refused_naming_it_not_a_traceback(tmp_path, capsys, content, says):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    assert main(["validate", "--policy", str(bad), DEMO]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err == f"{bad}: {says}\n"
    assert main(["validate", str(bad)]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip() == f"{bad}: manifest: {says}"


def test_validate_missing_policy_file(tmp_path, capsys):
    assert main(["validate", "--policy", str(tmp_path / "nope.yaml"), DEMO]) == EXIT_BAD_INPUT
    assert "nope.yaml: cannot read: No such file or directory" in capsys.readouterr().err


def test_validate_checks_a_policy_file_by_its_kind(tmp_path, capsys):
    policies, bad = tmp_path / "policies.yaml", tmp_path / "bad.yaml"
    policies.write_text(POLICIES)
    bad.write_text(POLICIES.replace("requireEnforce: true", "requireEnforce: maybe"))
    assert main(["validate", str(policies)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{policies}: valid HardenedModelPolicy everywhere",
                                                    f"{policies}: valid HardenedModelPolicy tenants"]
    assert main(["validate", str(bad)]) == EXIT_BAD_INPUT
    assert f"{bad}: document 2: spec.signing.requireEnforce: Invalid value: " in capsys.readouterr().err


def test_validate_namespace_labels_must_be_key_value(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["validate", "--namespace-labels", "tenant", DEMO])
    assert exc.value.code == 2
    assert "'tenant' is not key=value" in capsys.readouterr().err
