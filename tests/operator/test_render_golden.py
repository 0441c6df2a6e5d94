"""`hardened-model render` of every example, byte for byte, against the files in tests/operator/golden/ (issue
26: refactors keep the output; a change that means to alter it shows up as a diff of these files in review).

Regenerate after an intended change:  for f in examples/*.yaml; do
  .venv/bin/hardened-model render "$f" > tests/operator/golden/render-$(basename "$f"); done
"""
import subprocess
import sys

import pytest

from helpers import ROOT

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_every_example_has_a_golden_render():
    assert EXAMPLES
    golden = {p.name.removeprefix("render-") for p in (ROOT / "tests/operator/golden").glob("render-*.yaml")}
    assert golden == {p.name for p in EXAMPLES}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_render_is_byte_identical_to_the_golden_file(example):
    out = subprocess.run([sys.executable, "-m", "hardened_operator.cli", "render", str(example)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    golden = (ROOT / "tests/operator/golden" / f"render-{example.name}").read_text()
    assert out.stdout == golden, f"render of {example.name} changed: regenerate the golden file if intended"
