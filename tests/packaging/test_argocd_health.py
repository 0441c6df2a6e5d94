"""The Argo CD health check (Lua), run by a real Lua 5.4 interpreter on statuses the operator computes."""
import json
import shutil
import subprocess

import pytest
import yaml

from hardened_operator.reconcile import Observed, decide
from hardened_model.spec import parse_manifest
from helpers import ROOT, example

LUA = shutil.which("lua5.4") or shutil.which("lua")
SCRIPT = ROOT / "deploy/argocd/hardenedmodel-health.lua"
pytestmark = pytest.mark.skipif(LUA is None, reason="lua missing: run ./scripts/setup")
DIGEST = "ab" * 32
NOW = "2026-11-22T05:00:00Z"


def lua_literal(value) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string literal is a valid Lua string literal for our content
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    return "{" + ", ".join(f"[{json.dumps(k)}] = {lua_literal(v)}" for k, v in value.items() if v is not None) + "}"


def health(obj: dict) -> tuple[str, str]:
    program = (f"obj = {lua_literal(obj)}\n"
               f"local function check()\n{SCRIPT.read_text()}\nend\n"
               "local hs = check()\nio.write(hs.status, '\\n', hs.message or '')\n")
    out = subprocess.run([LUA, "-"], input=program, capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    status, _, message = out.stdout.partition("\n")
    return status, message


def resource(generation: int, status: dict | None) -> dict:
    doc = example("digits-demo")
    doc["metadata"].update(generation=generation, uid="u-1")
    return {**doc, "status": status}


def job(done=None):
    return {"metadata": {"name": "j"}, "status": {"conditions": [{"type": done, "status": "True"}] if done else []}}


def status_for(obs: Observed, generation=3) -> dict:
    doc = example("digits-demo")
    doc["metadata"].update(uid="u-1", generation=generation)
    return decide(parse_manifest(doc), obs, {}, now=NOW).status


VERIFIED = {"verified": True, "digest": DIGEST, "signer": "s", "gatesPassed": True, "metrics": {"epsilon": 7.9}}


def ready_deployment() -> dict:
    """The Deployment the operator builds for the verified version, as it is once rolled out."""
    built = next(o for o in decide(parse_manifest(resource(3, None)), Observed(
        train_job=job("Complete"), verify_job=job("Complete"), verify_message=VERIFIED), {}, now=NOW).ensure
        if o["kind"] == "Deployment")
    return {**built, "metadata": {**built["metadata"], "generation": 2},
            "status": {"observedGeneration": 2, "readyReplicas": 2, "updatedReplicas": 2, "replicas": 2,
                       "availableReplicas": 2}}


def test_lifecycle_maps_to_argo_health():
    serving = status_for(Observed(train_job=job("Complete"), verify_job=job("Complete"), verify_message=VERIFIED,
                                  deployment=ready_deployment()))
    assert serving["phase"] == "Serving"
    cases = [
        (resource(3, None), "Progressing"),
        (resource(3, status_for(Observed())), "Progressing"),  # Training
        (resource(3, status_for(Observed(train_job=job("Complete")))), "Progressing"),  # Verifying
        (resource(3, serving), "Healthy"),
        # a new spec (generation 4) that the operator has not seen yet: the old Ready does not count
        (resource(4, serving), "Progressing"),
        (resource(3, status_for(Observed(train_job=job("Failed"), train_message={"message": "CUDA OOM"}))),
         "Degraded"),
        (resource(3, status_for(Observed(train_job=job("Complete"), verify_job=job("Failed"),
                                         verify_message={"verified": False, "reason": "sha256 mismatch"}),
                                )), "Degraded"),
    ]
    for obj, expected in cases:
        got, message = health(obj)
        assert got == expected, (obj.get("status") or {}).get("phase", "no status") + f": {got} {message}"
    assert "sha256 mismatch" in health(cases[-1][0])[1]


def test_invalid_spec_and_missing_prerequisite_are_degraded():
    for reason in ("InvalidSpec", "PrerequisiteMissing"):
        st = {"observedGeneration": 5, "phase": "Pending",
              "conditions": [{"type": "Ready", "status": "False", "reason": reason, "observedGeneration": 5,
                              "message": "spec.training.epochs: Invalid value: 0"}]}
        assert health(resource(5, st))[0] == "Degraded"
    # a Ready condition from an older generation is not trusted even if the status says otherwise
    stale = {"observedGeneration": 5, "phase": "Serving",
             "conditions": [{"type": "Ready", "status": "True", "reason": "Serving", "observedGeneration": 4}]}
    assert health(resource(5, stale))[0] == "Progressing"


def test_gitops_argocd_cm_embeds_this_script():
    cm = yaml.safe_load((ROOT / "examples/gitops/argocd-cm-health.yaml").read_text())
    embedded = cm["data"]["resource.customizations.health.hardened.dev_HardenedModel"]
    assert embedded.strip() == SCRIPT.read_text().strip()


def test_gitops_applications_point_at_what_exists():
    apps = {p.name: yaml.safe_load(p.read_text()) for p in (ROOT / "examples/gitops").glob("*-application.yaml")}
    assert set(apps) == {"operator-application.yaml", "models-application.yaml"}
    chart = apps["operator-application.yaml"]["spec"]["source"]
    assert (ROOT / chart["path"] / "Chart.yaml").exists()
    values = yaml.safe_load((ROOT / chart["path"] / "values.yaml").read_text())
    assert set(chart["helm"]["valuesObject"]) <= set(values)  # keys the chart's values schema knows
    models = apps["models-application.yaml"]["spec"]["source"]
    assert (ROOT / models["path"] / models["directory"]["include"]).exists()
    waves = {n: int(a["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]) for n, a in apps.items()}
    assert waves["operator-application.yaml"] < waves["models-application.yaml"]
