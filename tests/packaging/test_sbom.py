"""Issue 18: every image carries a CycloneDX SBOM of its Python environment, made at build time by
cyclonedx-bom (a well-kept generator, not in the image itself), at SBOM_PATH.

Here: each Dockerfile makes and copies it, and the generator, run with the Dockerfile's own arguments on this
machine's environment (which holds the trainer's extra), lists torch, opacus, ART and model-signing at the
pinned versions. tests/e2e/test_images_sbom.py reads the SBOM out of each built image."""
import json
import re
import shlex
import subprocess
import sys

import pytest
from packaging.version import Version

from helpers import ROOT, SBOM_PATH, pinned_versions

DOCKERFILES = {"operator": "operator/Dockerfile", "trainer": "trainer_image/Dockerfile",
               "server": "server_image/Dockerfile"}


def generator_args(dockerfile: str) -> list[str]:
    """The cyclonedx-py arguments of the Dockerfile's build stage (output and interpreter left out)."""
    text = (ROOT / dockerfile).read_text().replace("\\\n", " ")
    m = re.search(r"/tmp/sbom-tool/bin/cyclonedx-py (environment .*?) -o /opt/sbom/sbom\.cdx\.json /opt/venv/bin/python",
                  text)
    assert m, f"{dockerfile}: no cyclonedx-py environment step writing /opt/sbom/sbom.cdx.json from /opt/venv"
    return shlex.split(m.group(1))


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_each_image_makes_its_sbom_and_carries_it(image):
    text = (ROOT / DOCKERFILES[image]).read_text()
    generator_args(DOCKERFILES[image])
    assert "pip install --no-cache-dir -c requirements/constraints.txt cyclonedx-bom" in text  # pinned generator
    final = text.rsplit("\nFROM ", 1)[1]
    assert f"COPY --from=build /opt/sbom/sbom.cdx.json {SBOM_PATH}" in final
    assert "sbom-tool" not in final  # the generator stays in the build stage


def test_the_generator_lists_the_trainer_extra_at_the_pinned_versions(tmp_path):
    out = tmp_path / "sbom.cdx.json"
    cmd = [str(ROOT / ".venv/bin/cyclonedx-py") if (ROOT / ".venv/bin/cyclonedx-py").exists() else "cyclonedx-py",
           *generator_args(DOCKERFILES["trainer"]), "-o", str(out), sys.executable]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=300)
    sbom = json.loads(out.read_text())
    assert sbom["bomFormat"] == "CycloneDX" and sbom["metadata"]["component"]["name"] == "hardened-model"
    found = {re.sub(r"[-_.]+", "-", c["name"]).lower(): c for c in sbom["components"]}
    pinned = pinned_versions()
    for name in ("torch", "opacus", "adversarial-robustness-toolbox", "model-signing", "sigstore", "safetensors"):
        component = found[name]
        # torch's local build label (+cpu) is not part of the pin: pip's == ignores it too
        assert Version(component["version"]).public == Version(pinned[name]).public, name
        assert component["purl"].startswith(f"pkg:pypi/{name}@"), component["purl"]
