"""examples/digits-distributed.yaml on the real cluster (issue 28): the chart's operator trains it over two pods
(an Indexed Job of two, one rank each, meeting at pod 0 through the headless Service by its cluster DNS name),
signs, verifies and serves the one model; then a rank's pod deleted mid-training fails the run at once (the
Job's podFailurePolicy), status names the pod, and the version already serving keeps serving. Between the
two, the Jobs' pods are deleted and the operator restarted: the version's record (issue 29) keeps the status.

The steps share one model and run in order. Requests are small (500m per training pod) so both fit the 2-CPU
node beside the operator.
"""
from __future__ import annotations

import json
import time

import pytest

from cluster import Cluster, hostpath_store, restart_operator, wait
from helpers import example

NS = "e2e-distributed"
DUMP_NAMESPACES = [NS]
MODEL = "digits-distributed"
TRAIN_SELECTOR = f"hardened.dev/model={MODEL},app.kubernetes.io/component=training"
INDEX = "batch.kubernetes.io/job-completion-index"


def status(api: Cluster) -> dict:
    return (api.get("hm", MODEL, NS) or {}).get("status") or {}


def cond(api: Cluster, type_: str) -> dict:
    return next((c for c in status(api).get("conditions", []) if c["type"] == type_), {})


def training_pods(api: Cluster, job: str) -> list[dict]:
    return [p for p in api.items("pods", NS, f"batch.kubernetes.io/job-name={job}")
            if not p["metadata"].get("deletionTimestamp")]


class Run:
    def __init__(self, api: Cluster, images: dict, store):
        self.api, self.images, self.store = api, images, store

    def manifest(self, **training) -> dict:
        doc = example(MODEL)
        doc["spec"]["training"].update(image=self.images["trainer"], **training)
        doc["spec"]["serving"]["image"] = self.images["server"]
        return doc


@pytest.fixture(scope="module")
def run(cluster: Cluster, operator) -> Run:
    if not cluster.shared:
        pytest.skip("e2e: the distributed steps use the shared cluster's node (a hostPath volume)")
    api = cluster
    api.namespace(NS, **{"pod-security.kubernetes.io/enforce": "restricted"})
    store = hostpath_store(api, NS, "e2e-distributed-artifacts", f"{MODEL}-signing")
    yield Run(api, operator, store)
    api.delete_namespace(NS)
    api.kubectl("delete", "pv", "e2e-distributed-artifacts", "--ignore-not-found", "--wait=false", check=False)


def test_two_pods_train_one_model_that_is_verified_and_served(run: Run):
    """apply -> an Indexed Job of two pods, each a rank, ranked by its completion index -> one signed model
    whose provenance records the world -> verification -> serving (Ready)."""
    api = run.api
    t0 = time.monotonic()
    api.apply(run.manifest(), namespace=NS)
    job = wait(lambda: (api.items("jobs", NS, TRAIN_SELECTOR) or [None])[0], 60, "the training Job", interval=0.5)
    name = job["metadata"]["name"]
    assert (job["spec"]["completionMode"], job["spec"]["completions"], job["spec"]["parallelism"]) == (
        "Indexed", 2, 2)
    svc = api.get("service", name, NS)
    assert svc is not None and svc["spec"]["clusterIP"] == "None"
    pods = wait(lambda: (lambda ps: ps if len(ps) == 2 else None)(training_pods(api, name)), 120,
                "both training pods")
    assert sorted(p["metadata"]["annotations"][INDEX] for p in pods) == ["0", "1"]
    assert {p["spec"]["hostname"] for p in pods} == {f"{name}-0", f"{name}-1"}
    api.kubectl("-n", NS, "wait", "--for=condition=Ready", f"hm/{MODEL}", "--timeout=1500s", timeout=1560)
    elapsed = time.monotonic() - t0
    st = status(api)
    assert st["phase"] == "Serving" and st["artifact"]["digest"] == st["serving"]["servedDigest"]
    assert 0 < st["metrics"]["epsilon"] <= 8.0
    done = api.get("job", name, NS)
    assert done["status"].get("succeeded") == 2, done["status"]
    provenance = json.loads((run.store / MODEL / st["training"]["configDigest"] / "model" /
                             "provenance.json").read_text())
    recorded = json.dumps(provenance)
    assert '"worldSize": 2' in recorded, provenance  # the signed provenance says how it was trained
    print(f"e2e distributed: apply -> Ready {elapsed:.0f}s (2 pods x 1 rank, 500m each)")


def test_the_version_record_outlives_the_jobs_pods_and_an_operator_restart(run: Run):
    """Issue 29 point 1, on the real cluster: with every finished Job pod deleted (node rotation, pod GC) and
    the operator restarted, the model is still Serving with the same conditions, and nothing trains again."""
    api = run.api
    before = status(api)
    jobs = {j["metadata"]["name"] for j in api.items("jobs", NS, "hardened.dev/model=" + MODEL)}
    api.kubectl("-n", NS, "delete", "pods", "-l", f"hardened.dev/model={MODEL},app.kubernetes.io/component in "
                "(training,verification)", "--wait=true", timeout=120)
    assert not api.items("pods", NS, f"hardened.dev/model={MODEL},app.kubernetes.io/component=training")
    restart_operator(api)
    time.sleep(5)  # it has resumed the model
    after = status(api)
    assert after["phase"] == "Serving", after
    strip = lambda st: {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}  # noqa: E731
    assert strip(after) == strip(before)
    assert after["serving"]["servedDigest"] == before["serving"]["servedDigest"]
    assert {j["metadata"]["name"] for j in api.items("jobs", NS, "hardened.dev/model=" + MODEL)} == jobs


def test_a_rank_deleted_mid_training_fails_the_run_naming_it_and_the_old_version_keeps_serving(run: Run):
    api = run.api
    served = status(api)["serving"]["servedDigest"]
    old_jobs = {j["metadata"]["name"] for j in api.items("jobs", NS, TRAIN_SELECTOR)}
    api.apply(run.manifest(seed=1), namespace=NS)  # a new version: a new Job
    job = wait(lambda: next((j for j in api.items("jobs", NS, TRAIN_SELECTOR)
                             if j["metadata"]["name"] not in old_jobs), None), 60, "the new training Job")
    name = job["metadata"]["name"]

    def running():
        pods = training_pods(api, name)
        return pods if len(pods) == 2 and all(p["status"].get("phase") == "Running" for p in pods) else None

    pods = wait(running, 180, "both new training pods running")
    victim = next(p for p in pods if p["metadata"]["annotations"][INDEX] == "1")
    api.kubectl("-n", NS, "delete", "pod", victim["metadata"]["name"], "--wait=false")
    wait(lambda: cond(api, "TrainingSucceeded").get("status") == "False", 300, "the run to fail")
    message = cond(api, "TrainingSucceeded")["message"]
    assert f"training Job {name} failed (PodFailurePolicy)" in message, message
    # the Job names the pod its FailJob rule matched (the ranks' own lines follow while their pods are there:
    # the Job controller removes them as it fails the Job)
    assert victim["metadata"]["name"] in message, message
    st = status(api)
    assert st["phase"] == "Failed" and st["lastFailure"]["stage"] == "training"
    assert st["serving"]["servedDigest"] == served and cond(api, "ServingReady")["status"] == "True"
    wait(lambda: not training_pods(api, name) or all(p["status"].get("phase") in ("Succeeded", "Failed")
                                                      for p in training_pods(api, name)),
         120, "no training pod left running")
