"""The three Dockerfiles and the build stage they share (scripts/image-build-stage), checked without a Docker
engine.

- each image is two stages: the build stage runs the shared script with the image's extra, and the final stage
  copies the venv and the SBOM it made, and nothing else;
- every command an image runs exists (the entry point and the subcommands the operator's pods call);
- the extra each image installs resolves: every requirement of it (transitively, markers evaluated) is
  installed here at a version the constraints allow;
- every third-party module the image's own code imports is provided by that closure, so an image that
  lacks a dependency fails here and not in a cluster.
"""
import ast
import importlib.metadata as md
import json
import re
import subprocess
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from helpers import ROOT

# image -> (Dockerfile, the extra it installs, the packages its code runs from)
IMAGES = {
    "operator": ("operator/Dockerfile", "operator", ["hardened_operator", "hardened_model"]),
    "trainer": ("trainer_image/Dockerfile", "trainer", ["hardened_trainer", "hardened_model"]),
    "server": ("server_image/Dockerfile", "server", ["hardened_server", "hardened_model"]),
}
# Modules of the shared hardened_operator package that an image never runs; each with the reason.
NOT_RUN = {
    "operator": {
        "local.py": "`hardened-model up` runs on a workstation with every extra installed",
        "uiconsole.py": "the console of `up`",
        "artifacts.py": "downloads run in the verify Job and init container (server image), never in the operator",
        "networks.py": "the operator builds no network (validate lists architectures with the torch-free "
                       "architectures.py)",
    },
    "trainer": {},
    "server": {},
}
# Imports inside functions that the image never calls, by (image, module file, imported top-level name).
LAZY_NOT_REACHED = {
    # signing.generate_key_pem (cryptography) is what the operator runs; verification is the server image's job
    ("operator", "signing.py", "model_signing"), ("operator", "signing.py", "sigstore"),
    # the CLI's subcommands import their package lazily; each image runs only its own
    ("operator", "cli.py", "hardened_trainer"), ("operator", "cli.py", "hardened_server"),
    # build_model(check_dp=True) validates with Opacus for the trainer; the server builds with check_dp=False
    ("server", "networks.py", "opacus"),
}


# The build stage's script, shared by the three Dockerfiles; what it leaves for the final stage to copy.
BUILD_STAGE = "scripts/image-build-stage"
BUILD_OUTPUTS = {"/opt/venv", "/opt/sbom/sbom.cdx.json"}
PIP_SOURCES = {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_TRUSTED_HOST", "PIP_CERT"}


def dockerfile(image: str) -> str:
    return (ROOT / IMAGES[image][0]).read_text()


def build_stage_script() -> str:
    return (ROOT / BUILD_STAGE).read_text()


def script_commands(text: str) -> list[str]:
    """The script's lines that run something (comments and blank lines left out, continuations joined)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.split(" #")[0].strip() for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    return [(m.group(1).upper(), m.group(2).strip()) for m in
            re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", joined, re.M) if not m.group(0).lstrip().startswith("#")]


def closure(extra: str) -> set[str]:
    """Canonical names of every distribution `pip install .[extra]` brings (as installed here)."""
    seen: set[str] = set()
    todo = [(r, extra) for r in md.requires("hardened-model") or []]
    while todo:
        req_text, want_extra = todo.pop()
        req = Requirement(req_text)
        if req.marker and not req.marker.evaluate({"extra": want_extra or ""}):
            continue
        name = canonicalize_name(req.name)
        version = md.version(req.name)  # raises PackageNotFoundError: the extra does not resolve here
        assert req.specifier.contains(version, prereleases=True), f"{req} but {version} is installed"
        for sub_extra in sorted(req.extras) + [None]:
            key = f"{name}[{sub_extra}]" if sub_extra else name
            if key in seen:
                continue
            seen.add(key)
            todo += [(r, sub_extra) for r in md.requires(req.name) or []]
    return {k.split("[")[0] for k in seen}


def third_party_imports(image: str) -> dict[str, set[str]]:
    """Top-level module name -> the files of this image's code that import it."""
    out: dict[str, set[str]] = {}
    stdlib = sys.stdlib_module_names
    for package in IMAGES[image][2]:
        base = next(p for p in (ROOT / "core", ROOT / "operator", ROOT / "trainer_image", ROOT / "server_image")
                    if (p / package).is_dir()) / package
        for path in base.rglob("*.py"):
            if package in ("hardened_operator", "hardened_model") and path.name in NOT_RUN[image]:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in stdlib or top == "__future__" or (image, path.name, top) in LAZY_NOT_REACHED:
                        continue
                    out.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return out


@pytest.mark.parametrize("image", IMAGES)
def test_image_is_multi_stage_non_root_and_pinned(image):
    steps = instructions(dockerfile(image))
    froms = [v for k, v in steps if k == "FROM"]
    args = dict(re.match(r"(\w+)=(\S+)", v).groups() for k, v in steps if k == "ARG" and "=" in v)
    assert len(froms) == 2 and froms[0].endswith(" AS build")
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-bookworm", base), base  # an exact patch release
    assert base.split(":")[1].startswith("%d.%d." % sys.version_info[:2])  # the Python minor version tested here
    final = steps[[i for i, (k, _) in enumerate(steps) if k == "FROM"][1]:]
    user = [v for k, v in final if k == "USER"]
    assert user and not user[-1].startswith(("0", "root")), user
    assert not any(k == "RUN" for k, _ in final), "the final stage only copies the venv (no build tools)"
    copied = [v.split() for k, v in final if k == "COPY"]
    assert all(c[0] == "--from=build" for c in copied) and {c[1] for c in copied} == BUILD_OUTPUTS, copied


@pytest.mark.parametrize("image", IMAGES)
def test_the_build_stage_runs_the_shared_script_with_the_images_extra(image):
    steps = instructions(dockerfile(image))
    build = steps[:[i for i, (k, _) in enumerate(steps) if k == "FROM"][1]]
    runs = [v for k, v in build if k == "RUN"]
    assert runs == [f"sh {BUILD_STAGE} {IMAGES[image][1]}"], runs
    assert next(v for k, v in build if k == "WORKDIR") == "/src"
    # pip's sources reach the script as build arguments (a RUN's environment), declared before it runs
    declared = {v.split("=")[0] for k, v in build[:build.index(("RUN", runs[0]))] if k == "ARG"}
    assert PIP_SOURCES <= declared, PIP_SOURCES - declared


def test_the_shared_build_stage_installs_the_extra_pinned_and_strips_the_venv():
    text = build_stage_script()
    subprocess.run(["sh", "-n", str(ROOT / BUILD_STAGE)], check=True)  # it parses, as the image's /bin/sh reads it
    commands = script_commands(text)
    assert commands[0] == "set -eu", "every step must fail the build, as the && chain it replaces did"
    assert re.search(r"^\s*operator\|trainer\|server\)", text, re.M), "the extra is checked"
    assert "python -m venv /opt/venv" in commands
    assert '/opt/venv/bin/pip install --no-cache-dir -c requirements/constraints.txt ".[$extra]"' in commands
    assert "/opt/venv/bin/pip uninstall -y pip setuptools wheel" in commands
    # the operator's CLI stays in the operator image only
    assert re.search(r'if \[ "\$extra" != operator \]; then\n\s*rm /opt/venv/bin/hardened-model\s', text), \
        "the trainer and server images drop the `hardened-model` script (hardened_operator is not in them)"
    # every path it names is one of the two the final stage copies, or the throw-away generator's under /tmp
    paths = set(re.findall(r"(?<![\w.$\]])(/[\w./-]+)", "\n".join(commands)))
    assert all(p.startswith(("/opt/venv", "/opt/sbom", "/tmp/sbom-tool")) for p in paths), paths
    assert "PIP_" not in "\n".join(commands), "pip's sources are left to pip: the script sets and prints no PIP_*"


@pytest.mark.parametrize("image", IMAGES)
def test_every_command_the_image_runs_exists(image):
    steps = instructions(dockerfile(image))
    entry = json.loads(next(v for k, v in steps if k == "ENTRYPOINT"))
    cmd = json.loads(next((v for k, v in steps if k == "CMD"), "[]"))
    argv = [sys.executable, *entry[1:]] if entry[0] == "python" else [str(ROOT / ".venv/bin" / entry[0])]
    out = subprocess.run(argv + cmd[:1] + ["--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    if image == "server":  # the commands the serving pod and the verify Job run (objects.py)
        for sub in ("verify", "serve", "validate-proxy", "ratelimit-proxy"):
            out = subprocess.run(argv + [sub, "--help"], capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, (sub, out.stderr)


@pytest.mark.parametrize("image", IMAGES)
def test_the_images_extra_provides_every_module_its_code_imports(image):
    provided = closure(IMAGES[image][1]) | {"hardened-model"}
    dists = md.packages_distributions()
    missing = {}
    for module, files in sorted(third_party_imports(image).items()):
        owners = {canonicalize_name(d) for d in dists.get(module, [])}
        assert owners, f"{module} (imported by {sorted(files)}) is installed by no distribution"
        if not owners & provided:
            missing[module] = sorted(files)
    assert not missing, f"the {image} image's extra lacks: {missing}"


@pytest.mark.parametrize("image", IMAGES)
def test_each_image_copies_the_core_and_its_own_package_only(image):
    """Issue 17: the serving image carries no operator or trainer code, and so on."""
    own = {"operator": "operator/", "trainer": "trainer_image/", "server": "server_image/"}[image]
    copied = {v.split()[0] for k, v in instructions(dockerfile(image)) if k == "COPY" and not v.startswith("--from")}
    assert copied == {"pyproject.toml", "requirements/", "core/", own, BUILD_STAGE}, copied
