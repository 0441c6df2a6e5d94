"""Every benchmark runs (issue 26): each one's --smoke mode, as a user would start it, ends with exit 0 and
prints its table. The benchmarks themselves are measured by hand (docs/benchmarks.md); this only keeps them
from rotting, as when an example's new settings stopped three of them at start-up."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT

TIMEOUT = 600  # seconds per benchmark: each smoke run takes seconds on an idle machine, far more on a busy one

pytestmark = pytest.mark.slow


def smoke(script: str, *args: str) -> str:
    """Run benchmarks/``script`` --smoke from the repository root; its stdout. It must not touch the docs."""
    doc = ROOT / "docs/benchmarks.md"
    before = doc.stat().st_mtime_ns
    out = subprocess.run([sys.executable, f"benchmarks/{script}", "--smoke", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=TIMEOUT)
    assert out.returncode == 0, f"{script} --smoke exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert doc.stat().st_mtime_ns == before, f"{script} --smoke wrote {doc.name}"
    return out.stdout


def needs(*programs: str):
    missing = [p for p in programs if shutil.which(p) is None and not os.path.exists(f"/usr/sbin/{p}")]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (./scripts/setup installs them)")


@pytest.mark.parametrize("script, args, table", [
    ("dp_overhead.py", (), ["cnn-28x28: ", "cnn-8x8: ", "tabular-mlp: ", "non-private", "DP-SGD fast (default)",
                            "DP-SGD ghost", "DP-SGD hooks"]),
    ("adv_throughput.py", (), ["ours (torch PGD-10)", "ART AdversarialTrainerMadryPGD", "speed-up: "]),
    ("distributed_scaling.py", (), ["world 1 ex/s", "world 2 ex/s", "plain ", "DP-SGD ", "PGD + DP-SGD "]),
    # dp_overhead.py's smoke covers the other two models' table; on the CPU it must say there is no GPU
    ("gpu_check.py", ("--only", "cnn-8x8"), ["cnn-8x8: ", "DP-SGD hooks", "adversarial + DP-SGD cnn-28x28",
                                             "MIA AUC"]),
    ("sanitization.py", (), ["digits: clean", "mnist: clean", "knn-label-consistency", "isolation-forest (pixels)"]),
    ("tabular.py", (), ["| RandomForest (balanced, 20 trees) |", "| MLP, adversarial, non-private |",
                        "DP-SGD at eps <= 3 vs non-private PR-AUC"]),
    ("weight_average.py", (), ["| digits-demo | none | 1 |", "| fraud MLP, adversarial + DP-SGD | 0.999 | 1 |"]),
    ("serving_micro.py", (), ["limits hit, synchronous", "orjson.loads", "forward pass, 1 torch threads, batch 8",
                              "hand-off to a worker thread", "gc, model server"]),
])
def test_trainer_and_in_process_benchmarks(script, args, table):
    out = smoke(script, *args)
    for line in table:
        assert line in out, f"{script} --smoke printed no {line!r}:\n{out[-3000:]}"
    if script == "gpu_check.py":
        import torch

        assert ("GPU: " if torch.cuda.is_available() else "no GPU: ") in out


@pytest.mark.skipif(os.geteuid() != 0, reason="data_memory.py makes a memory cgroup: needs root")
def test_data_memory():
    out = smoke("data_memory.py")
    for line in ("parquet ", "csv ", "(equal arrays)", "per-row faults", "prefetch",
                 "file-backed (default budget): exit 0", "in memory (budget > data): exit"):
        assert line in out, f"data_memory.py --smoke printed no {line!r}:\n{out[-3000:]}"


def test_efficacy_prints_one_json_row_per_setting():
    out = smoke("efficacy.py")
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["row"] for r in rows] == ["baseline", "adversarial", "dp", "adversarial+dp"]
    assert all({"clean", "pgd10", "mia_auc", "epsilon"} <= set(r) for r in rows)
    assert [r["epsilon"] is not None for r in rows] == [False, False, True, True]


@pytest.mark.server
@needs("wrk")
def test_proxy_overhead():
    out = smoke("proxy_overhead.py")
    for kind in ("aiohttp-client", "pool", "aiohttp-server", "httptools-protocol"):
        assert kind in out and "us CPU per request" in out


@pytest.mark.server
@needs("wrk", "nginx")
def test_serving_latency():
    out = smoke("serving_latency.py")
    assert "target      p50 ms" in out
    for target in ("model", "chain", "nginx", "pipes"):
        assert any(line.startswith(f"{target} ") for line in out.splitlines()), out[-3000:]


def test_cluster_figures_models_are_valid_specs():
    """The part that needs no cluster: the HardenedModel it applies passes the operator's validation."""
    out = subprocess.run([sys.executable, "-c", "import cluster_figures\nfrom hardened_model.spec import "
                          "parse_manifest\nprint(parse_manifest(cluster_figures.model('apply-000')).spec.model."
                          "architecture)"], cwd=ROOT / "benchmarks", capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0 and out.stdout.strip() == "cnn-8x8", out.stderr[-3000:]


@pytest.mark.e2e
@pytest.mark.skipif(not os.environ.get("E2E_KUBECONFIG"),
                    reason="cluster_figures.py measures a real cluster: set E2E_KUBECONFIG to run its smoke mode")
def test_cluster_figures():
    out = smoke("cluster_figures.py")
    assert "apply -> training Job" in out and "steady state" in out
