"""Issue 18: every image carries a CycloneDX SBOM of its Python environment, made at build time by
cyclonedx-bom (a well-kept generator, not in the image itself), at SBOM_PATH.

Here: the build stage the three Dockerfiles share (scripts/image-build-stage) makes it and each Dockerfile copies
it, and the generator, run with that script's own arguments on this machine's environment (which holds the
trainer's extra), lists torch, opacus, ART and model-signing at the pinned versions.
tests/e2e/test_images_sbom.py reads the SBOM out of each built image."""
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
BUILD_STAGE = "scripts/image-build-stage"  # the build stage the three Dockerfiles share; it makes the SBOM


def generator_args() -> list[str]:
    """The cyclonedx-py arguments of the shared build stage (output and interpreter left out)."""
    text = (ROOT / BUILD_STAGE).read_text().replace("\\\n", " ")
    m = re.search(r"/tmp/sbom-tool/bin/cyclonedx-py (environment .*?) -o /opt/sbom/sbom\.cdx\.json /opt/venv/bin/python",
                  text)
    assert m, f"{BUILD_STAGE}: no cyclonedx-py environment step writing /opt/sbom/sbom.cdx.json from /opt/venv"
    return shlex.split(m.group(1))


def test_the_shared_build_stage_makes_the_sbom_with_a_pinned_generator_of_its_own():
    text = (ROOT / BUILD_STAGE).read_text()
    generator_args()
    # pinned generator, in a venv of its own: not in /opt/venv, so neither in the image nor in its SBOM
    assert "python -m venv /tmp/sbom-tool\n" in text
    assert "/tmp/sbom-tool/bin/pip install --no-cache-dir -c requirements/constraints.txt cyclonedx-bom" in text


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_each_image_makes_its_sbom_and_carries_it(image):
    text = (ROOT / DOCKERFILES[image]).read_text()
    build, final = text.rsplit("\nFROM ", 1)
    assert f"\nRUN sh {BUILD_STAGE} {image}\n" in build  # the shared stage, which makes /opt/sbom/sbom.cdx.json
    assert f"COPY --from=build /opt/sbom/sbom.cdx.json {SBOM_PATH}" in final
    assert "sbom-tool" not in final  # the generator stays in the build stage


def test_the_generator_lists_the_trainer_extra_at_the_pinned_versions(tmp_path):
    out = tmp_path / "sbom.cdx.json"
    cmd = [str(ROOT / ".venv/bin/cyclonedx-py") if (ROOT / ".venv/bin/cyclonedx-py").exists() else "cyclonedx-py",
           *generator_args(), "-o", str(out), sys.executable]
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
