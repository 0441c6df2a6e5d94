"""The operator run for real (kopf.testing.KopfRunner) against the kmock API emulator, watch stream included.

The tests play the missing controllers: they mark Jobs complete (with the pod
termination message the trainer and verifier write) and report Deployment
readiness.
"""
import asyncio
import base64
import contextlib
import json
import os

import kmock
import kopf
import pytest
from kopf.testing import KopfRunner

from hardened_operator.manifests.objects import names
from hardened_model.spec import parse_manifest
from chart_support import Permission, allows, grants, permission, render, rules_of
from helpers import ROOT, example
from kmock_support import RVEmulator, alive, declare, get, wait_for, write_kubeconfig

pytestmark = [pytest.mark.server, pytest.mark.kmock(cls=RVEmulator)]
HANDLERS = str(ROOT / "operator/hardened_operator/handlers.py")
NS = "default"
HM = ("hardened.dev/v1alpha1/hardenedmodels", NS, "digits-demo")
DIGEST = "9f" * 32


OPERATOR_AGENTS = ("kopf/", "OpenAPI-Generator/")  # kopf's own client and the kubernetes client (kube.py)


def operator_permissions(k8s) -> set[Permission]:
    """The RBAC check of every request the operator made (the tests' own requests carry aiohttp's agent)."""
    out = set()
    for req in k8s:
        if req.headers.get("User-Agent", "").startswith(OPERATOR_AGENTS):
            p = permission(str(req.method.value if hasattr(req.method, "value") else req.method).upper(),
                           req.url.path, dict(req.url.query))
            if p is not None:
                out.add(p)
    return out


@pytest.fixture(scope="module")
def chart_rbac():
    """The RBAC rules of the Helm chart as installed by default (every namespace watched)."""
    return rules_of(render())


@pytest.fixture
def k8s(kmock, chart_rbac):
    """kmock made kopf-ready. After each test: the chart's RBAC allows every request the operator made."""
    import pathlib

    # tests/conftest.py fixed the path before anything imported `kubernetes`; this writes the file's content
    write_kubeconfig(pathlib.Path(os.environ["KUBECONFIG"]), str(kmock.url))
    declare(kmock)
    os.environ["HARDENED_RETRY_SECONDS"] = "0.5"
    yield kmock
    used = operator_permissions(kmock)
    assert used, "no operator request was recorded"
    denied = sorted(str(p) for p in used if not allows(chart_rbac, p))
    assert not denied, f"the chart's RBAC denies requests the operator made: {denied}"


@contextlib.asynccontextmanager
async def runner(*options: str):
    """KopfRunner, entered and left from a worker thread: kmock serves from this event loop, which must
    keep serving the operator's last requests while the runner waits for it to stop.
    Always -A: with --namespace, kopf lists /api/v1/namespaces, a path kmock 0.8 cannot parse (500)."""
    r = KopfRunner(["run", "-A", "--standalone", *options, HANDLERS], timeout=60, registry=kopf.OperatorRegistry())
    await asyncio.to_thread(r.__enter__)
    try:
        yield r
    finally:
        await asyncio.to_thread(r.__exit__, None, None, None)


def manifest(**spec_patch):
    doc = example("digits-demo")
    doc["metadata"]["namespace"] = NS
    doc["spec"]["serving"]["replicas"] = 1
    for k, v in spec_patch.items():
        doc["spec"][k] = {**doc["spec"].get(k, {}), **v}
    return doc


def job_names(doc):
    return names(parse_manifest(doc))


MODELS_URL = f"/apis/hardened.dev/v1alpha1/namespaces/{NS}/hardenedmodels"


async def create_model(k8s, doc):
    await asyncio.sleep(1)  # the operator has listed and started watching
    assert (await k8s.post(MODELS_URL, json=doc)).status == 200


async def update_spec(k8s, doc):
    assert (await k8s.patch(f"{MODELS_URL}/digits-demo", json={"spec": doc["spec"]})).status == 200


def job_creates(k8s) -> int:
    return len([r for r in k8s[kmock.action.CREATE] if r.resource and "jobs" in str(r.resource)])


def writes(k8s) -> int:
    return len(k8s[kmock.action.CREATE]) + len(k8s[kmock.action.UPDATE])


async def create_signing_secret(k8s):
    """The prerequisites the demo spec names: its signing key Secret and the PVC of its pvc:// store."""
    b64 = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
    resp = await k8s.post(f"/api/v1/namespaces/{NS}/secrets", json={
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "digits-demo-signing", "namespace": NS},
        "data": {"private.pem": b64("-----BEGIN PRIVATE KEY-----"), "public.pem": b64("-----BEGIN PUBLIC KEY-----")}})
    assert resp.status == 200
    resp = await k8s.post(f"/api/v1/namespaces/{NS}/persistentvolumeclaims", json={
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "hardened-models", "namespace": NS},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "10Gi"}}}})
    assert resp.status == 200


NODE = "gpu-node-3"  # the node the played kubelet's training pod ran on


async def complete_job(k8s, name, message: dict | None, failed=False, ran: tuple[str, str] | None = None):
    """Play the Job controller: a pod with a termination message, then the Job's final condition. ``ran``:
    play the kubelet too, a trainer container given that (image reference, imageID)."""
    container = {"name": "trainer" if ran else "c", **({"imageID": ran[1]} if ran else {})}
    await k8s.post(f"/api/v1/namespaces/{NS}/pods", json={
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{name}-x1", "namespace": NS,
                                                         "labels": {"job-name": name}},
        **({"spec": {"containers": [{"name": "trainer", "image": ran[0]}], "nodeName": NODE}} if ran else {}),
        "status": {"containerStatuses": [{**container, "state": {"terminated": {
            "exitCode": 3 if failed else 0, "message": json.dumps(message) if message else ""}}}]}})
    cond = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
            "message": "Job has reached the specified backoff limit"} if failed else \
        {"type": "Complete", "status": "True"}
    resp = await k8s.patch(f"/apis/batch/v1/namespaces/{NS}/jobs/{name}", json={
        "status": {"conditions": [cond], "startTime": "2026-11-22T05:00:00Z",
                   **({"failed": 1} if failed else {"succeeded": 1, "completionTime": "2026-11-22T05:01:00Z"})}})
    assert resp.status == 200


async def deployment_ready(k8s, replicas=1):
    dep = get(k8s.objects, ("apps/v1/deployments", NS, "digits-demo"))
    await k8s.patch(f"/apis/apps/v1/namespaces/{NS}/deployments/digits-demo", json={"status": {
        "observedGeneration": dep["metadata"].get("generation", 1), "readyReplicas": replicas,
        "updatedReplicas": replicas, "replicas": replicas, "availableReplicas": replicas}})


def status(k8s):
    return (get(k8s.objects, HM) or {}).get("status") or {}


def cond(k8s, type_):
    return next((c for c in status(k8s).get("conditions", []) if c["type"] == type_), {})


VERIFIED = {"verified": True, "reason": "signature and every file verified", "digest": DIGEST,
            "signer": "sha256:abc", "gatesPassed": True, "gates": ["minCleanAccuracy: 0.9467 (passed, threshold 0.8)"],
            "metrics": {"cleanAccuracy": 0.9467, "robustAccuracy": 0.63, "epsilon": 7.99, "membershipAUC": 0.52}}


async def to_serving(k8s, doc):
    n = job_names(doc)
    assert await wait_for(lambda: alive(k8s.objects, ("batch/v1/jobs", NS, n.train)))
    await complete_job(k8s, n.train, {"gatesPassed": True, "digest": DIGEST})
    assert await wait_for(lambda: alive(k8s.objects, ("batch/v1/jobs", NS, n.verify)))
    await complete_job(k8s, n.verify, VERIFIED)
    assert await wait_for(lambda: alive(k8s.objects, ("apps/v1/deployments", NS, "digits-demo")))
    await deployment_ready(k8s)
    assert await wait_for(lambda: status(k8s).get("phase") == "Serving"), status(k8s)


async def test_create_to_ready_secret_missing_then_created(k8s):
    doc = manifest()
    n = job_names(doc)
    async with runner() as r:
        await create_model(k8s, doc)
        assert await wait_for(lambda: cond(k8s, "Ready").get("reason") == "PrerequisiteMissing"), status(k8s)
        assert "spec.signing.privateKeySecret: Secret default/digits-demo-signing" in cond(k8s, "Ready")["message"]
        assert "spec.artifacts.store: PersistentVolumeClaim default/hardened-models" in cond(k8s, "Ready")["message"]
        assert not alive(k8s.objects, ("batch/v1/jobs", NS, n.train))
        await create_signing_secret(k8s)
        assert await wait_for(lambda: status(k8s).get("phase") == "Training", 40), status(k8s)
        job = get(k8s.objects, ("batch/v1/jobs", NS, n.train))
        assert job["metadata"]["ownerReferences"][0]["uid"] == get(k8s.objects, HM)["metadata"]["uid"]
        cm = get(k8s.objects, ("v1/configmaps", NS, n.train))
        assert json.loads(cm["data"]["train.json"])["version"] == n.version
        assert alive(k8s.objects, ("v1/secrets", NS, "digits-demo-api-keys"))  # generated
        await to_serving(k8s, doc)
        dep = get(k8s.objects, ("apps/v1/deployments", NS, "digits-demo"))
        assert dep["metadata"]["annotations"]["hardened.dev/digest"] == DIGEST
        st = status(k8s)
        assert st["observedGeneration"] == 1
        assert {c["type"]: c["status"] for c in st["conditions"]} == {
            "PolicyAllowed": "True", "TrainingSucceeded": "True", "SignatureVerified": "True", "GatesPassed": "True",
            "ServingReady": "True", "Ready": "True"}
        assert cond(k8s, "PolicyAllowed")["message"] == f"no HardenedModelPolicy selects namespace {NS}"
        assert all(c["observedGeneration"] == 1 for c in st["conditions"])
        assert st["artifact"]["digest"] == DIGEST and st["metrics"]["epsilon"] == 7.99
        assert st["serving"]["servedDigest"] == DIGEST
        for kind in ("v1/services", "networking.k8s.io/v1/networkpolicies", "policy/v1/poddisruptionbudgets"):
            assert alive(k8s.objects, (kind, NS, "digits-demo"))
        # steady state: no writes at all over several reconcile intervals
        await asyncio.sleep(1)  # let the events of the last transition settle
        before = writes(k8s)
        await asyncio.sleep(2.5)
        done = list(k8s[kmock.action.CREATE]) + list(k8s[kmock.action.UPDATE])
        assert len(done) == before, [(w.method, str(w.url)) for w in done][-3:]
    assert r.exit_code == 0, r.output
    assert "PrerequisiteMissing" in r.output and "Serving" in r.output
    posted = [req.data for req in k8s[kmock.action.CREATE] if req.resource and "events" in str(req.resource)]
    assert {e.get("reason") for e in posted} >= {"PrerequisiteMissing", "Training", "Serving"}  # per transition
    # the generated API key is in its Secret and nowhere else: not in the operator's log, not in an Event
    api_key = get(k8s.objects, ("v1/secrets", NS, "digits-demo-api-keys"))["stringData"]["keys"].strip()
    assert api_key.startswith("hm_") and len(api_key) > 30
    assert api_key not in r.output and not any(api_key in str(e) for e in posted)


async def test_restart_mid_training_makes_no_second_job(k8s):
    doc = manifest()
    await create_signing_secret(k8s)
    async with runner():
        await create_model(k8s, doc)
        assert await wait_for(lambda: status(k8s).get("phase") == "Training")
        first = status(k8s)
    jobs_before = job_creates(k8s)
    async with runner():
        await asyncio.sleep(1.5)
        before = writes(k8s)
        await asyncio.sleep(2)
        assert writes(k8s) == before  # no change, no writes
        assert status(k8s)["phase"] == "Training"
        assert job_creates(k8s) == jobs_before
        assert status(k8s)["conditions"] == first["conditions"]  # same times: nothing transitioned
        await to_serving(k8s, doc)


async def test_the_version_record_outlives_the_jobs_pods_and_a_restart(k8s):
    """Issue 29 point 1: the reports lived only in the finished Jobs' pods; node rotation or pod GC removed
    them and the serving model turned to SignatureVerified False. The operator keeps them in the version's
    record (a ConfigMap it owns); with every Job pod gone and the operator restarted, the status is the same
    and nothing trains again."""
    doc = manifest()
    n = job_names(doc)
    await create_signing_secret(k8s)
    async with runner():
        await create_model(k8s, doc)
        await to_serving(k8s, doc)
        assert await wait_for(lambda: alive(k8s.objects, ("v1/configmaps", NS, n.record)))
        serving = status(k8s)
    record = get(k8s.objects, ("v1/configmaps", NS, n.record))
    assert record["metadata"]["ownerReferences"][0]["uid"] == get(k8s.objects, HM)["metadata"]["uid"]
    assert json.loads(record["data"]["verification.json"])["digest"] == DIGEST
    assert json.loads(record["data"]["training.json"])["report"] == {"gatesPassed": True, "digest": DIGEST}
    for job in (n.train, n.verify):  # the kubelet's pods go: node rotation, GC, kubectl delete pod
        assert (await k8s.delete(f"/api/v1/namespaces/{NS}/pods/{job}-x1")).status == 200
    jobs_before = job_creates(k8s)
    async with runner():  # restarted with every Job pod gone
        await asyncio.sleep(2)
        assert status(k8s)["phase"] == "Serving", status(k8s)
        assert status(k8s)["conditions"] == serving["conditions"]  # not one condition moved
        assert job_creates(k8s) == jobs_before
        assert status(k8s)["metrics"] == serving["metrics"] and status(k8s)["artifact"] == serving["artifact"]


async def train_new_version(k8s) -> dict:
    """While the first version serves, a training change: the new version's Jobs run; the verify Job is left
    for the caller to complete. Returns the new version's names."""
    new = manifest(training={"epochs": 21})
    await update_spec(k8s, new)
    n2 = job_names(new)
    assert await wait_for(lambda: alive(k8s.objects, ("batch/v1/jobs", NS, n2.train)))
    assert status(k8s)["serving"]["servedDigest"] == DIGEST  # the old version serves meanwhile
    await complete_job(k8s, n2.train, {"gatesPassed": True})
    assert await wait_for(lambda: alive(k8s.objects, ("batch/v1/jobs", NS, n2.verify)))
    return n2


async def test_tampered_version_never_replaces_the_serving_one(k8s):
    doc = manifest()
    await create_signing_secret(k8s)
    async with runner():
        await create_model(k8s, doc)
        await to_serving(k8s, doc)
        n2 = await train_new_version(k8s)
        await complete_job(k8s, n2.verify, {"verified": False, "reason": "files changed after signing "
                                                                            "(sha256 mismatch): model.safetensors"},
                           failed=True)
        assert await wait_for(lambda: status(k8s).get("phase") == "Failed"), status(k8s)
        st = status(k8s)
        assert cond(k8s, "SignatureVerified")["status"] == "False"
        assert "model.safetensors" in cond(k8s, "SignatureVerified")["message"]
        assert cond(k8s, "Ready")["status"] == "False" and "keeps serving" in cond(k8s, "Ready")["message"]
        assert st["lastFailure"]["stage"] == "verification" and st["observedGeneration"] == 2
        dep = get(k8s.objects, ("apps/v1/deployments", NS, "digits-demo"))
        assert dep["metadata"]["annotations"]["hardened.dev/digest"] == DIGEST  # the old version keeps serving


async def test_gate_failure_is_not_rolled_out_and_invalid_spec_is_permanent(k8s):
    doc = manifest()
    n = job_names(doc)
    await create_signing_secret(k8s)
    async with runner() as r:
        await create_model(k8s, doc)
        assert await wait_for(lambda: alive(k8s.objects, ("batch/v1/jobs", NS, n.train)))
        await complete_job(k8s, n.train, None)
        assert await wait_for(lambda: alive(k8s.objects, ("batch/v1/jobs", NS, n.verify)))
        await complete_job(k8s, n.verify, {**VERIFIED, "gatesPassed": False,
                                              "reason": "signature verified; gates failed: minRobustAccuracy"},
                           failed=True)
        assert await wait_for(lambda: status(k8s).get("phase") == "Failed")
        assert cond(k8s, "GatesPassed")["status"] == "False"
        assert not alive(k8s.objects, ("apps/v1/deployments", NS, "digits-demo"))
        bad = manifest(training={"epochs": 0})
        await update_spec(k8s, bad)
        assert await wait_for(lambda: cond(k8s, "Ready").get("reason") == "InvalidSpec")
        assert "spec.training.epochs: Invalid value: 0" in cond(k8s, "Ready")["message"]
    assert "invalid spec" in r.output


async def test_serving_only_change_rolls_out_without_retraining_and_delete_is_not_blocked(k8s):
    doc = manifest()
    await create_signing_secret(k8s)
    async with runner():
        await create_model(k8s, doc)
        await to_serving(k8s, doc)
        jobs_before = job_creates(k8s)
        changed = manifest(serving={"replicas": 2})
        assert job_names(changed).version == job_names(doc).version
        await update_spec(k8s, changed)
        dep_key = ("apps/v1/deployments", NS, "digits-demo")
        assert await wait_for(lambda: get(k8s.objects, dep_key)["spec"]["replicas"] == 2)
        assert get(k8s.objects, dep_key)["metadata"]["annotations"]["hardened.dev/digest"] == DIGEST
        assert await wait_for(lambda: status(k8s).get("phase") == "RollingOut")
        await deployment_ready(k8s, replicas=2)
        assert await wait_for(lambda: status(k8s).get("phase") == "Serving" and status(k8s)["observedGeneration"] == 2)
        assert job_creates(k8s) == jobs_before
        assert not get(k8s.objects, HM)["metadata"].get("finalizers")  # nothing external to clean up
        assert (await k8s.delete(f"{MODELS_URL}/digits-demo")).status == 200
        assert await wait_for(lambda: not alive(k8s.objects, HM))
    # children are collected by the garbage collector through their ownerReferences (kmock has none)
    assert get(k8s.objects, dep_key)["metadata"]["ownerReferences"][0]["kind"] == "HardenedModel"


async def test_monitoring_drift_repair_and_the_chart_grants_exactly_what_the_operator_uses(k8s, chart_rbac):
    """With the Prometheus Operator CRDs present: ServiceMonitor and PrometheusRule; operator metrics; /healthz.
    Children edited by hand are put back on the next pass. Over this whole life (create, train, verify, serve,
    change, repair) the operator uses every permission the chart grants, and no other."""
    import urllib.request

    from hardened_operator.operator_metrics import METRICS
    from helpers import free_port

    await k8s.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json={
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "prometheusrules.monitoring.coreos.com"},
        "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                 "names": {"kind": "PrometheusRule", "plural": "prometheusrules", "singular": "prometheusrule"},
                 "versions": [{"name": "v1", "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": {"type": "object",
                                                              "x-kubernetes-preserve-unknown-fields": True}}}]}})
    doc = manifest(monitoring={"labels": {"release": "kube-prometheus-stack"}})
    await create_signing_secret(k8s)
    port = free_port()
    before = METRICS.reconciles.labels("ok")._value.get()
    async with runner(f"--liveness=http://127.0.0.1:{port}/healthz"):
        await create_model(k8s, doc)
        await to_serving(k8s, doc)
        for kind in ("servicemonitors", "prometheusrules"):
            obj = get(k8s.objects, (f"monitoring.coreos.com/v1/{kind}", NS, "digits-demo"))
            assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        rule = get(k8s.objects, ("monitoring.coreos.com/v1/prometheusrules", NS, "digits-demo"))
        assert any(x.get("alert") == "HardenedModelClientDominatesTraffic" for g in rule["spec"]["groups"]
                   for x in g["rules"])
        health = await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz").status)
        assert health == 200
        assert METRICS.reconciles.labels("ok")._value.get() > before
        assert METRICS.epsilon.labels(NS, "digits-demo")._value.get() == 7.99
        assert METRICS.robust_accuracy.labels(NS, "digits-demo")._value.get() == 0.63
        assert METRICS.clean_accuracy.labels(NS, "digits-demo")._value.get() == 0.9467

        # drift: someone edits the operator's children by hand
        base = f"/api/v1/namespaces/{NS}"
        await k8s.patch(f"{base}/services/digits-demo", json={"spec": {"ports": [{"name": "http", "port": 81}]}})
        await k8s.patch(f"/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/digits-demo",
                        json={"spec": {"maxUnavailable": 5}})
        await k8s.patch(f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/digits-demo",
                        json={"spec": {"ingress": [{}]}})  # admit everything
        await k8s.patch(f"/apis/monitoring.coreos.com/v1/namespaces/{NS}/servicemonitors/digits-demo",
                        json={"spec": {"endpoints": []}})
        # ... then the spec changes: a tighter rate limit and alert threshold (serving only, no retraining)
        changed = manifest(monitoring={"labels": {"release": "kube-prometheus-stack"},
                                       "alerts": {"rateLimitedRatio": 0.05}},
                           serving={"rateLimit": {"perKey": {"requestsPerSecond": 2, "burst": 4}}})
        await update_spec(k8s, changed)

        def repaired():
            svc = get(k8s.objects, ("v1/services", NS, "digits-demo"))
            pdb = get(k8s.objects, ("policy/v1/poddisruptionbudgets", NS, "digits-demo"))
            pol = get(k8s.objects, ("networking.k8s.io/v1/networkpolicies", NS, "digits-demo"))
            mon = get(k8s.objects, ("monitoring.coreos.com/v1/servicemonitors", NS, "digits-demo"))
            cfg = get(k8s.objects, ("v1/configmaps", NS, "digits-demo-serving"))
            rule = get(k8s.objects, ("monitoring.coreos.com/v1/prometheusrules", NS, "digits-demo"))
            return (svc["spec"]["ports"][0]["port"] == 80 and pdb["spec"]["maxUnavailable"] == 1
                    and pol["spec"]["ingress"][0] == {"ports": [{"protocol": "TCP", "port": "http"}]}
                    and len(mon["spec"]["endpoints"]) == 3
                    and json.loads(cfg["data"]["serving.json"])["rateLimit"]["perKey"]["requestsPerSecond"] == 2
                    and "> 0.05" in str(rule["spec"]))
        assert await wait_for(repaired, 20)
    used = {(p.group, p.resource, p.verb) for p in operator_permissions(k8s)}
    granted = grants(chart_rbac)
    assert used == granted, f"granted, never used: {sorted(granted - used)}; used, not granted: {sorted(used - granted)}"


async def test_api_faults_409_500_and_dropped_watches_converge_to_one_job_and_serving(k8s):
    """Conflicts, server errors and watch streams that end: the operator retries, creates each Job once, and
    reaches the same final status as without faults."""
    doc = manifest()
    n = job_names(doc)
    await create_signing_secret(k8s)
    ns = f"/namespaces/{NS}"
    faults = [
        k8s.inject("POST", rf"/apis/batch/v1{ns}/jobs$", 409),              # a conflict on the first Job create
        k8s.inject("POST", rf"/api/v1{ns}/configmaps$", 500, times=2),      # the API server fails twice
        k8s.inject("PATCH", r"/hardenedmodels/digits-demo/status$", 500),   # the first status write fails
        k8s.inject("GET", rf"/apis/apps/v1{ns}/deployments/digits-demo$", 503, times=2),
        k8s.inject("GET", r"/hardenedmodels/digits-demo$", 500),            # reading the model fails once
        k8s.inject("GET", r"/apis/batch/v1/jobs\?.*watch=true", 0, times=3),  # the Job watch drops 3 times
        k8s.inject("GET", r"/hardenedmodels\?.*watch=true", 0, times=2),
    ]
    async with runner():
        await create_model(k8s, doc)
        await to_serving(k8s, doc)
        assert await wait_for(lambda: cond(k8s, "Ready").get("status") == "True", 30), status(k8s)
    hit = {f.path: f.hits for f in faults}
    assert all(f.hits == f.times for f in faults), hit  # every fault was met
    created = [r for r in k8s[kmock.action.CREATE] if r.resource and "jobs" in str(r.resource)]
    succeeded = {r.data["metadata"]["name"] for r in created} & {n.train, n.verify}
    assert succeeded == {n.train, n.verify}
    assert alive(k8s.objects, ("batch/v1/jobs", NS, n.train))
    st = status(k8s)
    assert st["phase"] == "Serving" and st["observedGeneration"] == 1
    assert {c["type"]: c["status"] for c in st["conditions"]}["Ready"] == "True"


async def roll_out_a_second_version(k8s) -> tuple:
    """v1 serves; v2 trains and verifies; the operator points the Deployment at v2 (RollingOut)."""
    doc = manifest()
    await create_signing_secret(k8s)
    await create_model(k8s, doc)
    await to_serving(k8s, doc)
    n2 = await train_new_version(k8s)
    await complete_job(k8s, n2.verify, {**VERIFIED, "digest": "7e" * 32})
    dep_key = ("apps/v1/deployments", NS, "digits-demo")
    assert await wait_for(lambda: get(k8s.objects, dep_key)["metadata"]["annotations"]["hardened.dev/digest"]
                          == "7e" * 32)
    assert await wait_for(lambda: status(k8s).get("phase") == "RollingOut")
    return n2, dep_key


async def test_restart_mid_rollout_reaches_the_same_final_status(k8s):
    async with runner():
        n2, dep_key = await roll_out_a_second_version(k8s)
    jobs_before, rolling = job_creates(k8s), status(k8s)
    async with runner():  # restarted mid-rollout
        await asyncio.sleep(1.5)
        assert job_creates(k8s) == jobs_before and status(k8s)["phase"] == "RollingOut"
        assert status(k8s)["conditions"] == rolling["conditions"]
        await deployment_ready(k8s)
        assert await wait_for(lambda: status(k8s).get("phase") == "Serving"), status(k8s)
    st = status(k8s)
    assert st["serving"]["servedDigest"] == "7e" * 32 and st["artifact"]["digest"] == "7e" * 32
    assert cond(k8s, "Ready")["status"] == "True" and job_creates(k8s) == jobs_before
    assert st["observedGeneration"] == 2 and "lastFailure" not in st
    # issue 29: what served, newest first; the first version stopped when the second's rollout completed
    assert [(e["version"], e["digest"]) for e in st["history"]] == [(n2.version, "7e" * 32),
                                                                     (st["history"][1]["version"], DIGEST)]
    assert st["history"][1]["stopped"] == f"replaced by version {n2.version}" and "servedTo" not in st["history"][0]


async def test_a_rollout_whose_pods_never_start_fails_while_the_old_pods_serve(k8s):
    """The new version's artifact changed after verification: its init container refuses it, the Deployment
    controller gives up (ProgressDeadlineExceeded), maxUnavailable 0 keeps the old pods: Failed, said why."""
    async with runner():
        n2, dep_key = await roll_out_a_second_version(k8s)
        jobs_before = job_creates(k8s)
        dep = get(k8s.objects, dep_key)
        await k8s.patch(f"/apis/apps/v1/namespaces/{NS}/deployments/digits-demo", json={"status": {
            "observedGeneration": dep["metadata"].get("generation", 1), "readyReplicas": 1, "updatedReplicas": 0,
            "replicas": 2, "conditions": [{"type": "Progressing", "status": "False",
                                           "reason": "ProgressDeadlineExceeded",
                                           "message": 'ReplicaSet "digits-demo-new" has timed out progressing.'}]}})
        assert await wait_for(lambda: status(k8s).get("phase") == "Failed"), status(k8s)
        st = status(k8s)
        assert cond(k8s, "Ready")["reason"] == "RolloutStuck"
        assert "previous version keep serving" in cond(k8s, "Ready")["message"]
        assert st["lastFailure"]["stage"] == "rollout" and job_creates(k8s) == jobs_before


async def test_a_child_the_api_server_refuses_fails_the_model_with_its_message_and_is_retried(k8s):
    """Issue 14: a real apiserver refused the serving Deployment (422) and the model stayed 'Verifying' with no
    word of why and no retry. Now: Failed, Ready ChildRejected with the server's message, a Warning Event, and
    the next pass creates it once the server admits it."""
    doc = manifest()
    n = job_names(doc)
    await create_signing_secret(k8s)
    refusal = k8s.inject("POST", rf"/apis/apps/v1/namespaces/{NS}/deployments$", 422, times=3)
    async with runner():
        await create_model(k8s, doc)
        assert await wait_for(lambda: alive(k8s.objects, ("batch/v1/jobs", NS, n.train)))
        await complete_job(k8s, n.train, {"gatesPassed": True, "digest": DIGEST})
        assert await wait_for(lambda: alive(k8s.objects, ("batch/v1/jobs", NS, n.verify)))
        await complete_job(k8s, n.verify, VERIFIED)
        assert await wait_for(lambda: cond(k8s, "Ready").get("reason") == "ChildRejected"), status(k8s)
        st = status(k8s)
        assert st["phase"] == "Failed" and st["lastFailure"]["stage"] == "apply"
        assert "Deployment digits-demo: the API server refused it (422" in cond(k8s, "Ready")["message"]
        assert "injected 422" in cond(k8s, "Ready")["message"]  # the server's own message
        assert alive(k8s.objects, ("v1/services", NS, "digits-demo"))  # the rest was still ensured
        assert await wait_for(lambda: alive(k8s.objects, ("apps/v1/deployments", NS, "digits-demo")), 30)
        assert refusal.hits == 3  # retried until admitted
        await deployment_ready(k8s)
        assert await wait_for(lambda: status(k8s).get("phase") == "Serving"), status(k8s)
        assert "lastFailure" not in status(k8s)
    posted = [req.data for req in k8s[kmock.action.CREATE] if req.resource and "events" in str(req.resource)]
    assert any(e.get("reason") == "ChildRejected" and e.get("type") == "Warning" for e in posted)


async def test_the_tabular_example_is_rendered_and_reconciled_to_serving(k8s):
    """Issue 15: examples/fraud-tabular.yaml through the operator: the trainer config carries the feature schema,
    the serving config marks the model tabular (the validation sidecar then checks features from the verified
    model.json), and status and the gauges show the positive-class figures its gates read."""
    from hardened_operator.operator_metrics import METRICS

    doc = example("fraud-tabular")
    doc["metadata"]["namespace"] = NS
    n = job_names(doc)
    await create_signing_secret(k8s)  # its PVC (the spec generates its own keys)
    async with runner():
        await create_model(k8s, doc)
        assert await wait_for(lambda: alive(k8s.objects, ("batch/v1/jobs", NS, n.train)))
        cfg = json.loads(get(k8s.objects, ("v1/configmaps", NS, n.train))["data"]["train.json"])
        assert [f["name"] for f in cfg["spec"]["data"]["features"]][:3] == ["amt", "category", "hour"]
        assert cfg["spec"]["training"]["classWeights"] == "balanced"
        await complete_job(k8s, n.train, {"gatesPassed": True, "digest": DIGEST})
        assert await wait_for(lambda: alive(k8s.objects, ("batch/v1/jobs", NS, n.verify)))
        figures = {"cleanAccuracy": 0.98, "robustAccuracy": 0.97, "epsilon": 2.99, "membershipAUC": 0.5,
                   "recall": 0.84, "precision": 0.17, "prAUC": 0.4427, "balancedAccuracy": 0.91, "robustRecall": 0.75}
        await complete_job(k8s, n.verify, {**VERIFIED, "metrics": figures,
                                              "name": "fraud-tabular"})
        dep_key = ("apps/v1/deployments", NS, "fraud-tabular")
        assert await wait_for(lambda: alive(k8s.objects, dep_key))
        serving = json.loads(get(k8s.objects, ("v1/configmaps", NS, "fraud-tabular-serving"))["data"]["serving.json"])
        assert serving["model"]["tabular"] is True and serving["model"]["labels"] == ["legit", "fraud"]
        assert serving["validation"]["rangeTolerance"] == 0.1
        validation = next(c for c in get(k8s.objects, dep_key)["spec"]["template"]["spec"]["containers"]
                          if c["name"] == "validation")
        assert "--model-dir" in validation["args"]
        hm = ("hardened.dev/v1alpha1/hardenedmodels", NS, "fraud-tabular")
        metrics = lambda: ((get(k8s.objects, hm) or {}).get("status") or {}).get("metrics") or {}  # noqa: E731
        assert await wait_for(lambda: metrics().get("recall") == 0.84), metrics()
        assert metrics()["prAUC"] == 0.4427 and metrics()["robustRecall"] == 0.75
        assert METRICS.positive["recall"].labels(NS, "fraud-tabular")._value.get() == 0.84


async def run_verifier(container: dict, artifact, public_key, tmp) -> dict:
    """Run the real verifier with the arguments the operator rendered for ``container`` (the verify Job's or
    the init container's), the in-pod paths mapped to this machine's; returns its termination message."""
    from hardened_server.cli import main as server_main

    args = list(container["args"])
    args[args.index("--artifact") + 1] = str(artifact)
    args[args.index("--public-key") + 1] = str(public_key)
    log = tmp / f"termination-{len(list(tmp.iterdir()))}"
    args[args.index("--termination-log") + 1] = str(log)
    code = await asyncio.to_thread(server_main, args)
    message = json.loads(log.read_text())
    message["exitCode"] = code
    return message


async def test_a_model_from_an_unlisted_trainer_image_is_refused_and_the_old_version_keeps_serving(
        k8s, keys, tmp_path):
    """Issue 18: signing.provenance reaches the verify Job and the serving pods' init container; the real
    verifier, run with the arguments the operator rendered, accepts a model whose signed provenance names an
    allowed trainer image and refuses one from another image; the refused version never replaces the serving
    one, and status shows the served version's data digest and trainer image digest."""
    from helpers import make_artifact

    good_image = "ghcr.io/hardened-model/trainer@sha256:" + "ab" * 32
    good = make_artifact(tmp_path / "good", keys[0], trainer_image=good_image)
    evil = make_artifact(tmp_path / "evil", keys[0], trainer_image="ghcr.io/evil/trainer@sha256:" + "cd" * 32)
    logs = tmp_path / "logs"
    logs.mkdir()
    doc = manifest(signing={"provenance": {"allowedTrainerImages": ["ghcr.io/hardened-model/"],
                                           "requireDataDigest": True}})
    n = job_names(doc)
    await create_signing_secret(k8s)
    async with runner():
        await create_model(k8s, doc)
        assert await wait_for(lambda: alive(k8s.objects, ("batch/v1/jobs", NS, n.train)))
        await complete_job(k8s, n.train, {"gatesPassed": True})
        assert await wait_for(lambda: alive(k8s.objects, ("batch/v1/jobs", NS, n.verify)))
        job = get(k8s.objects, ("batch/v1/jobs", NS, n.verify))
        verify_container = job["spec"]["template"]["spec"]["containers"][0]
        policy = json.loads(verify_container["args"][verify_container["args"].index("--provenance-policy") + 1])
        assert policy == {"allowedTrainerImages": ["ghcr.io/hardened-model/"], "requireDataDigest": True,
                          "required": False}
        verdict = await run_verifier(verify_container, good, keys[1], logs)
        assert verdict.pop("exitCode") == 0, verdict
        await complete_job(k8s, n.verify, verdict)
        dep_key = ("apps/v1/deployments", NS, "digits-demo")
        assert await wait_for(lambda: alive(k8s.objects, dep_key))
        await deployment_ready(k8s)
        assert await wait_for(lambda: status(k8s).get("phase") == "Serving"), status(k8s)
        served = status(k8s)["serving"]
        data_digest = verdict["provenance"]["dataDigest"]
        assert served["dataDigest"] == data_digest and served["trainerImageDigest"] == "sha256:" + "ab" * 32
        assert status(k8s)["artifact"]["trainerImage"] == good_image
        first_digest = verdict["digest"]
        init = get(k8s.objects, dep_key)["spec"]["template"]["spec"]["initContainers"][0]
        assert "--provenance-policy" in init["args"]
        # the init container, with the same policy, refuses the other image's model (a swapped artifact)
        refused = await run_verifier(init | {"args": [a if a != first_digest else evil_digest(evil)
                                                      for a in init["args"]]}, evil, keys[1], logs)
        assert refused["exitCode"] == 3 and "allowedTrainerImages" in refused["reason"]

        # a new version, trained by an image the policy does not list: the verify Job refuses it
        new = manifest(training={"epochs": 21}, signing=doc["spec"]["signing"])
        await update_spec(k8s, new)
        n2 = job_names(new)
        assert await wait_for(lambda: alive(k8s.objects, ("batch/v1/jobs", NS, n2.train)))
        await complete_job(k8s, n2.train, {"gatesPassed": True})
        assert await wait_for(lambda: alive(k8s.objects, ("batch/v1/jobs", NS, n2.verify)))
        job = get(k8s.objects, ("batch/v1/jobs", NS, n2.verify))
        verdict = await run_verifier(job["spec"]["template"]["spec"]["containers"][0], evil, keys[1], logs)
        assert verdict.pop("exitCode") == 3
        await complete_job(k8s, n2.verify, verdict, failed=True)
        assert await wait_for(lambda: status(k8s).get("phase") == "Failed"), status(k8s)
        message = cond(k8s, "SignatureVerified")["message"]
        assert "signing.provenance.allowedTrainerImages" in message and "ghcr.io/evil/trainer" in message
        assert "keeps serving" in cond(k8s, "Ready")["message"]
        dep = get(k8s.objects, dep_key)
        assert dep["metadata"]["annotations"]["hardened.dev/digest"] == first_digest  # the old version serves
        assert status(k8s)["serving"]["trainerImageDigest"] == "sha256:" + "ab" * 32


async def test_a_model_whose_provenance_claims_an_allowed_image_the_kubelet_did_not_run_is_refused(
        k8s, keys, tmp_path):
    """Issue 27 point 4: the trainer holds the signing key and writes its own provenance, so an image may claim
    an allowed name. The (emulated) kubelet reports what the training pod ran; the operator passes it to the
    verify Job and pins it for the init container; the real verifier, run with the arguments the operator
    rendered, refuses a claim the kubelet contradicts, naming both images, and the old version keeps serving."""
    from helpers import make_artifact

    allowed = "ghcr.io/hardened-model/trainer:0.1.0"
    allowed_id = "ghcr.io/hardened-model/trainer@sha256:" + "ab" * 32
    evil, evil_id = "evil.io/trainer:1", "evil.io/trainer@sha256:" + "cd" * 32
    good = make_artifact(tmp_path / "good", keys[0], trainer_image=allowed)
    liar = make_artifact(tmp_path / "liar", keys[0], trainer_image=allowed, seed=1)  # says allowed; ran evil
    logs = tmp_path / "logs"
    logs.mkdir()
    signing = {"provenance": {"allowedTrainerImages": ["ghcr.io/hardened-model/"]}}
    doc = manifest(training={"image": allowed}, signing=signing)
    n = job_names(doc)
    await create_signing_secret(k8s)
    dep_key = ("apps/v1/deployments", NS, "digits-demo")
    async with runner():
        await create_model(k8s, doc)
        assert await wait_for(lambda: alive(k8s.objects, ("batch/v1/jobs", NS, n.train)))
        await complete_job(k8s, n.train, {"gatesPassed": True}, ran=(allowed, allowed_id))
        assert await wait_for(lambda: alive(k8s.objects, ("batch/v1/jobs", NS, n.verify)))
        container = get(k8s.objects, ("batch/v1/jobs", NS, n.verify))["spec"]["template"]["spec"]["containers"][0]
        assert container["args"][container["args"].index("--observed-trainer-image-id") + 1] == allowed_id
        verdict = await run_verifier(container, good, keys[1], logs)
        assert verdict.pop("exitCode") == 0, verdict
        assert verdict["observedTrainer"] == {"image": allowed, "imageID": allowed_id, "node": NODE}
        await complete_job(k8s, n.verify, verdict)
        assert await wait_for(lambda: alive(k8s.objects, dep_key))
        await deployment_ready(k8s)
        assert await wait_for(lambda: status(k8s).get("phase") == "Serving"), status(k8s)
        first_digest = verdict["digest"]
        init = get(k8s.objects, dep_key)["spec"]["template"]["spec"]["initContainers"][0]
        assert init["args"][init["args"].index("--observed-trainer-image") + 1] == allowed
        assert (await run_verifier(init, good, keys[1], logs))["exitCode"] == 0  # a restarted pod still verifies

        # the next version: the spec names the allowed image, the provenance says so, the kubelet ran another
        new = manifest(training={"image": allowed, "epochs": 21}, signing=signing)
        await update_spec(k8s, new)
        n2 = job_names(new)
        assert await wait_for(lambda: alive(k8s.objects, ("batch/v1/jobs", NS, n2.train)))
        await complete_job(k8s, n2.train, {"gatesPassed": True}, ran=(evil, evil_id))
        assert await wait_for(lambda: alive(k8s.objects, ("batch/v1/jobs", NS, n2.verify)))
        job = get(k8s.objects, ("batch/v1/jobs", NS, n2.verify))
        verdict = await run_verifier(job["spec"]["template"]["spec"]["containers"][0], liar, keys[1], logs)
        assert verdict.pop("exitCode") == 3, verdict
        assert (f'the provenance says the model was trained by "{allowed}", but the kubelet ran "{evil}" '
                f"(imageID {evil_id})") in verdict["reason"]
        await complete_job(k8s, n2.verify, verdict, failed=True)
        assert await wait_for(lambda: status(k8s).get("phase") == "Failed"), status(k8s)
        message = cond(k8s, "SignatureVerified")["message"]
        assert allowed in message and evil in message
        assert "keeps serving" in cond(k8s, "Ready")["message"]
        dep = get(k8s.objects, dep_key)
        assert dep["metadata"]["annotations"]["hardened.dev/digest"] == first_digest  # the old version serves
        assert json.loads(dep["metadata"]["annotations"]["hardened.dev/observed-trainer"])["imageID"] == allowed_id


async def test_a_platform_key_countersigns_the_verified_version_and_the_init_container_requires_it(
        k8s, keys, tmp_path, monkeypatch):
    """Issue 27 point 4: the operator, configured with a platform key (HARDENED_PLATFORM_KEY_FILE), signs the
    version its verifier accepted; the Deployment carries the envelope and the init container's flags, and the
    real verifier, run with those rendered arguments, accepts the artifact. An artifact replaced after
    countersigning is refused by that same init-container run, also when its pinned digest is rewritten to
    match: the platform never countersigned that digest. The private key is in no object the operator wrote."""
    from hardened_model import countersign
    from hardened_model.countersign import PlatformKey
    from hardened_model.signing import generate_key_pem
    from hardened_operator.manifests.objects import COUNTERSIGNATURE_ANNOTATION
    from helpers import make_artifact

    private_pem = generate_key_pem()[0]
    key_file = tmp_path / "platform.pem"
    key_file.write_text(private_pem)
    monkeypatch.setenv("HARDENED_PLATFORM_KEY_FILE", str(key_file))
    platform = PlatformKey.from_pem(private_pem)
    image, image_id = "ghcr.io/hardened-model/trainer:0.1.0", "ghcr.io/hardened-model/trainer@sha256:" + "ab" * 32
    good = make_artifact(tmp_path / "good", keys[0], trainer_image=image)
    swapped = make_artifact(tmp_path / "swapped", keys[0], trainer_image=image, seed=1)  # tenant-signed too
    logs = tmp_path / "logs"
    logs.mkdir()
    doc = manifest(training={"image": image})
    n = job_names(doc)
    dep_key = ("apps/v1/deployments", NS, "digits-demo")
    await create_signing_secret(k8s)
    async with runner():
        await create_model(k8s, doc)
        assert await wait_for(lambda: alive(k8s.objects, ("batch/v1/jobs", NS, n.train)))
        await complete_job(k8s, n.train, {"gatesPassed": True}, ran=(image, image_id))
        assert await wait_for(lambda: alive(k8s.objects, ("batch/v1/jobs", NS, n.verify)))
        container = get(k8s.objects, ("batch/v1/jobs", NS, n.verify))["spec"]["template"]["spec"]["containers"][0]
        assert "--countersignature" not in container["args"]  # the verify Job makes what the platform signs
        verdict = await run_verifier(container, good, keys[1], logs)
        assert verdict.pop("exitCode") == 0, verdict
        await complete_job(k8s, n.verify, verdict)
        assert await wait_for(lambda: alive(k8s.objects, dep_key))
        await deployment_ready(k8s)
        assert await wait_for(lambda: status(k8s).get("phase") == "Serving"), status(k8s)
        dep = get(k8s.objects, dep_key)
        envelope = json.loads(dep["metadata"]["annotations"][COUNTERSIGNATURE_ANNOTATION])
        statement = countersign.verify(envelope, platform.public_pem)
        assert statement["subject"][0]["digest"]["sha256"] == verdict["digest"]
        assert statement["predicate"]["model"] == {"namespace": NS, "name": "digits-demo", "version": n.version}
        assert statement["predicate"]["observedTrainer"] == {"image": image, "imageID": image_id, "node": NODE}
        init = dep["spec"]["template"]["spec"]["initContainers"][0]
        args = init["args"]
        assert json.loads(args[args.index("--countersignature") + 1]) == envelope
        assert args[args.index("--platform-public-key-pem") + 1] == platform.public_pem
        assert args[args.index("--expect-model") + 1] == f"{NS}/digits-demo"
        accepted = await run_verifier(init, good, keys[1], logs)
        assert accepted["exitCode"] == 0 and accepted["countersignature"]["keyid"] == platform.keyid, accepted

        # the store's bytes replaced after countersigning by another model the tenant's key signed
        refused = await run_verifier(init, swapped, keys[1], logs)
        assert refused["exitCode"] == 3 and "is not the pinned" in refused["reason"], refused
        other = evil_digest(swapped)
        repinned = init | {"args": [other if a == verdict["digest"] else a for a in args]}
        refused = await run_verifier(repinned, swapped, keys[1], logs)
        assert refused["exitCode"] == 3, refused
        assert refused["reason"] == ("signature verified; countersignature refused: the platform countersigned "
                                     f"digest {verdict['digest']}, not this model's {other}")
        # later passes keep the one envelope (no rollout), and the private key is in nothing the operator wrote
        await deployment_ready(k8s)
        await asyncio.sleep(1)
        assert get(k8s.objects, dep_key)["metadata"]["annotations"][COUNTERSIGNATURE_ANNOTATION] == \
            dep["metadata"]["annotations"][COUNTERSIGNATURE_ANNOTATION]
        body = private_pem.strip().splitlines()[1]
        for key in list(k8s.objects):
            assert body not in json.dumps(get(k8s.objects, key) or {}, default=dict), key

def evil_digest(artifact) -> str:
    from hardened_model.signing import read_signed_manifest

    return read_signed_manifest(artifact / "model.sig")[0]


POLICIES_URL = "/apis/hardened.dev/v1alpha1/hardenedmodelpolicies"


def policy_doc(name: str, **spec) -> dict:
    return {"apiVersion": "hardened.dev/v1alpha1", "kind": "HardenedModelPolicy", "metadata": {"name": name},
            "spec": spec}


async def test_a_policy_created_after_admission_stops_the_next_version_and_its_deletion_lets_it_train(k8s):
    """Issue 27: a HardenedModelPolicy that the serving model breaks, created after the model was admitted,
    takes effect without a model change (the operator watches policies): PolicyAllowed False naming the
    policy and the fields, Failed at stage policy, one Warning Event. A spec change then makes no Job and
    leaves the Deployment exactly as it was: version 1 keeps serving. The policy deleted, the new version
    trains. A policy selecting another namespace changes nothing."""
    k8s.add_namespace(NS, tenant="ml")
    doc = manifest()
    await create_signing_secret(k8s)
    dep_key = ("apps/v1/deployments", NS, "digits-demo")
    async with runner() as r:
        await create_model(k8s, doc)
        await to_serving(k8s, doc)
        assert await wait_for(lambda: cond(k8s, "Ready").get("status") == "True"), status(k8s)
        other = policy_doc("elsewhere", namespaceSelector={"matchLabels": {"tenant": "web"}}, gates={"maxEpsilon": 1})
        assert (await k8s.post(POLICIES_URL, json=other)).status == 200
        await asyncio.sleep(1.5)
        assert status(k8s)["phase"] == "Serving"
        assert cond(k8s, "PolicyAllowed")["message"] == f"no HardenedModelPolicy selects namespace {NS}"

        strict = policy_doc("strict", namespaceSelector={"matchLabels": {"tenant": "ml"}},
                            gates={"maxEpsilon": 1, "minRobustAccuracy": 0.5})
        assert (await k8s.post(POLICIES_URL, json=strict)).status == 200
        expected = ("HardenedModelPolicy strict: spec.gates.minRobustAccuracy: 0.3 is below the policy's floor 0.5; "
                    "HardenedModelPolicy strict: spec.gates.maxEpsilon: 8 is above the policy's ceiling 1")
        assert await wait_for(lambda: cond(k8s, "PolicyAllowed").get("status") == "False"), status(k8s)
        allowed = cond(k8s, "PolicyAllowed")
        assert (allowed["reason"], allowed["message"]) == ("PolicyViolation", expected)
        st = status(k8s)
        assert st["phase"] == "Failed" and st["lastFailure"]["stage"] == "policy"
        assert st["lastFailure"]["reason"] == "PolicyViolation"
        assert cond(k8s, "Ready")["message"] == expected + f"; version {job_names(doc).version} keeps serving"
        assert st["serving"]["servedDigest"] == DIGEST
        served = get(k8s.objects, dep_key)

        jobs_before = job_creates(k8s)
        new = manifest(training={"epochs": 21})
        n2 = job_names(new)
        await update_spec(k8s, new)
        assert await wait_for(lambda: status(k8s).get("observedGeneration") == 2), status(k8s)
        await asyncio.sleep(1.5)  # passes enough to have made a Job, were it going to
        assert job_creates(k8s) == jobs_before and not alive(k8s.objects, ("batch/v1/jobs", NS, n2.train))
        dep = get(k8s.objects, dep_key)
        assert (dep["spec"], dep["metadata"]["annotations"]) == (served["spec"], served["metadata"]["annotations"])
        assert cond(k8s, "PolicyAllowed")["message"] == expected
        assert cond(k8s, "Ready")["message"] == expected + f"; version {job_names(doc).version} keeps serving"

        assert (await k8s.delete(f"{POLICIES_URL}/strict")).status == 200
        assert await wait_for(lambda: alive(k8s.objects, ("batch/v1/jobs", NS, n2.train))), status(k8s)
        assert await wait_for(lambda: cond(k8s, "PolicyAllowed").get("status") == "True"), status(k8s)
        assert status(k8s)["phase"] == "Training"
        assert get(k8s.objects, dep_key)["metadata"]["annotations"]["hardened.dev/digest"] == DIGEST
    assert "1 HardenedModel(s) to check again after this ADDED event" in r.output  # the policy's, not the model's
    assert "after this DELETED event" in r.output
    posted = [req.data for req in k8s[kmock.action.CREATE] if req.resource and "events" in str(req.resource)]
    refusals = [e for e in posted if e.get("reason") == "PolicyViolation"]
    assert len(refusals) == 1 and refusals[0]["type"] == "Warning", refusals
    assert expected in refusals[0]["message"]
