"""The import rule (issue 17, DESIGN "Layout"): the core imports none of the three packages; the trainer and
the server import the core only, never each other or the operator; only hardened_operator.cli reaches into
the trainer and the server (it dispatches `hardened-model train/serve/...` in a development install)."""
import ast

import pytest

from helpers import ROOT

PACKAGES = {"hardened_model": ROOT / "core/hardened_model", "hardened_operator": ROOT / "operator/hardened_operator",
            "hardened_trainer": ROOT / "trainer_image/hardened_trainer",
            "hardened_server": ROOT / "server_image/hardened_server"}
FORBIDDEN = {"hardened_model": {"hardened_operator", "hardened_trainer", "hardened_server"},
             "hardened_trainer": {"hardened_operator", "hardened_server"},
             "hardened_server": {"hardened_operator", "hardened_trainer"},
             "hardened_operator": {"hardened_trainer", "hardened_server"}}
ALLOWED = {("hardened_operator", "cli.py")}


def imports(path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_imports_what_the_rule_forbids(package):
    bad = {}
    for path in sorted(PACKAGES[package].rglob("*.py")):
        if (package, path.name) in ALLOWED:
            continue
        hits = imports(path) & FORBIDDEN[package]
        if hits:
            bad[str(path.relative_to(ROOT))] = sorted(hits)
    assert not bad, f"{package} breaks the import rule: {bad}"
