"""examples/digits-demo.yaml on a real cluster, as a platform team's first hour goes (issue 14): the chart's
operator in the cluster trains, signs, verifies and serves it with the locally built images, then the faults.

The steps share one model and run in order; each test is one step and says what it proves. The namespace
enforces the "restricted" Pod Security Standard, and the artifact store is a ReadWriteOnce volume (like EBS).
"""
from __future__ import annotations

import json
import pathlib
import socket
import time

import numpy as np
import pytest

from cluster import Cluster, hostpath_store, restart_operator, wait
from hardened_model.signing import MODEL_DIR_NAME
from helpers import TINY, example, http, infer_body, merge_patch

NS = "e2e-demo"
DUMP_NAMESPACES = [NS]
MODEL = "digits-demo"
TRAIN_SELECTOR = f"hardened.dev/model={MODEL},app.kubernetes.io/component=training"
SERVING_SELECTOR = f"hardened.dev/model={MODEL},app.kubernetes.io/component=serving"
FIGURES: dict[str, float] = {}


def status(api: Cluster) -> dict:
    return (api.get("hm", MODEL, NS) or {}).get("status") or {}


def cond(api: Cluster, type_: str) -> dict:
    return next((c for c in status(api).get("conditions", []) if c["type"] == type_), {})


class Demo:
    """What the steps share: the cluster, where the artifacts live, the API key, the endpoint."""

    def __init__(self, api: Cluster, images: dict, store: pathlib.Path | None):
        self.api, self.images, self.store = api, images, store
        self.key = ""
        self.tls = None  # an SSLContext (CA and client certificate) once the endpoint speaks TLS

    def url(self) -> str:
        svc = self.api.get("service", MODEL, NS)
        port = svc["spec"]["ports"][0]
        scheme = "https" if port["name"] == "https" else "http"
        return f"{scheme}://{svc['spec']['clusterIP']}:{port['port']}/v2/models/{MODEL}/infer"

    def routed(self, timeout: float = 60) -> float:
        """Wait until the Service's ClusterIP accepts a connection; returns the seconds waited. Ready means the
        pods are ready; kube-proxy programs the ClusterIP from the EndpointSlice a moment later (on a busy
        node seconds), and until then a connection is refused. Every Kubernetes rollout has that window."""
        svc = self.api.get("service", MODEL, NS)
        address = (svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["port"])
        t0 = time.monotonic()
        wait(lambda: socket.create_connection(address, timeout=2).close() or True, timeout,
             f"kube-proxy to route {address[0]}:{address[1]}", interval=0.2)
        return time.monotonic() - t0

    def infer(self, body, key: str | None = "", **headers):
        key = self.key if key == "" else key
        auth = {"Authorization": f"Bearer {key}"} if key else {}
        return http("POST", self.url(), body, {**auth, **headers}, timeout=20, context=self.tls)

    def version_dir(self) -> pathlib.Path:
        return self.store / MODEL / status(self.api)["training"]["configDigest"]


def digits(n: int) -> np.ndarray:
    from sklearn.datasets import load_digits

    return (load_digits().images[:n] / 16.0).reshape(n, 1, 8, 8)


@pytest.fixture(scope="module")
def demo(cluster: Cluster, operator) -> Demo:
    if not cluster.shared:
        pytest.skip("e2e: the digits-demo steps use the shared cluster's node (a hostPath volume, ctr, ClusterIPs)")
    api = cluster
    api.namespace(NS, **{"pod-security.kubernetes.io/enforce": "restricted"})
    store = hostpath_store(api, NS, "e2e-demo-artifacts", "digits-demo-signing")
    yield Demo(api, operator, store)
    api.delete_namespace(NS)
    api.kubectl("delete", "pv", "e2e-demo-artifacts", "--ignore-not-found", "--wait=false", check=False)


def test_apply_to_ready_with_the_operator_restarted_mid_training(demo: Demo):
    """kubectl apply -> training Job -> (operator pod deleted mid-training: no second Job, same conditions) ->
    verification -> serving -> `kubectl wait --for=condition=Ready`."""
    api = demo.api
    doc = example(MODEL)
    doc["spec"]["training"]["image"] = demo.images["trainer"]
    doc["spec"]["serving"]["image"] = demo.images["server"]
    t0 = time.monotonic()
    api.apply(doc, namespace=NS)
    wait(lambda: api.items("jobs", NS, TRAIN_SELECTOR), 60, "the training Job", interval=0.2)
    FIGURES["apply_to_job_s"] = time.monotonic() - t0
    wait(lambda: status(api).get("phase") == "Training", 30, "phase Training")
    before = {c["type"]: c for c in status(api)["conditions"]}

    restart_operator(api, timeout=120)
    time.sleep(3)  # it has resumed every model
    jobs = api.items("jobs", NS, TRAIN_SELECTOR)
    assert len(jobs) == 1, [j["metadata"]["name"] for j in jobs]
    if status(api)["phase"] == "Training":  # still training: not one condition moved
        assert {c["type"]: c for c in status(api)["conditions"]} == before

    api.kubectl("-n", NS, "wait", "--for=condition=Ready", f"hm/{MODEL}", "--timeout=900s", timeout=960)
    FIGURES["apply_to_ready_s"] = time.monotonic() - t0
    FIGURES["ready_to_routed_s"] = demo.routed()
    st = status(api)
    assert st["phase"] == "Serving" and st["observedGeneration"] == 1
    assert {c["type"]: c["status"] for c in st["conditions"]} == {
        "TrainingSucceeded": "True", "GatesPassed": "True", "SignatureVerified": "True", "ServingReady": "True",
        "PolicyAllowed": "True", "Ready": "True"}
    assert st["artifact"]["digest"] == st["serving"]["servedDigest"]
    assert 0 < st["metrics"]["epsilon"] <= 8.0 and len(str(st["metrics"]["epsilon"])) <= 6  # rounded for display
    assert len(api.items("jobs", NS, TRAIN_SELECTOR)) == 1
    # the suite runs with the platform countersignature on (conftest): the operator signed this version, and
    # every Ready serving pod's init container verified that envelope with the platform key, for this model
    # and the digest it computed, before its server started
    from hardened_model.countersign import verify as verify_envelope

    dep = api.get("deployment", MODEL, NS)
    envelope = dep["metadata"]["annotations"]["hardened.dev/countersignature"]
    init = next(c for c in dep["spec"]["template"]["spec"]["initContainers"] if c["name"] == "verify-model")
    args = init["args"]
    # the annotation keeps json's spaced form, the flag the compact one (commands.json_arg): the same envelope
    assert json.loads(args[args.index("--countersignature") + 1]) == json.loads(envelope)
    assert args[args.index("--expect-model") + 1] == f"{NS}/{MODEL}"
    statement = verify_envelope(envelope, args[args.index("--platform-public-key-pem") + 1])
    assert statement["subject"][0]["digest"]["sha256"] == st["serving"]["servedDigest"]
    assert api.get("secret", "hardened-platform-signing", NS) is None  # the platform's key stays with the operator
    printed = api.kubectl("-n", NS, "get", "hm", MODEL).stdout
    assert str(st["metrics"]["epsilon"]) in printed and "Serving" in printed
    secret = api.get("secret", f"{MODEL}-api-keys", NS)
    import base64
    demo.key = base64.b64decode(secret["data"]["keys"]).decode().strip()
    print(f"apply -> Job {FIGURES['apply_to_job_s']:.1f}s, apply -> Ready {FIGURES['apply_to_ready_s']:.1f}s, "
          f"Ready -> ClusterIP routed {FIGURES['ready_to_routed_s']:.1f}s")


def test_real_requests_through_the_service(demo: Demo):
    """With the API key 200 and a prediction; without 401; malformed 400; a burst past the limit 429."""
    x = digits(2)
    code, body, _ = demo.infer(infer_body(x))
    assert code == 200, body
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["probabilities"]["shape"] == [2, 10] and len(outputs["label"]["data"]) == 2
    assert demo.infer(infer_body(x), key=None)[0] == 401
    assert demo.infer(infer_body(x), key="hm_" + "x" * 32)[0] == 401
    assert demo.infer(b'{"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32"', )[0] == 400
    assert demo.infer(infer_body(np.full((1, 1, 8, 8), 5.0)))[0] == 400  # outside validation's [0, 1]
    time.sleep(2.5)  # the bucket refills (5/s, burst 10)
    t0 = time.monotonic()
    codes = [demo.infer(infer_body(x[:1]))[0] for _ in range(40)]
    elapsed = time.monotonic() - t0
    assert set(codes) <= {200, 429} and codes.count(429) >= 1, codes
    # the limit holds however fast this machine sends: at most the burst plus what refilled meanwhile
    assert 10 <= codes.count(200) <= 10 + 5 * elapsed + 1, (codes, elapsed)


def serving_pods(api: Cluster, ready: bool | None = None) -> list[dict]:
    pods = [p for p in api.items("pods", NS, SERVING_SELECTOR) if not p["metadata"].get("deletionTimestamp")]
    if ready is None:
        return pods
    return [p for p in pods if any(c["type"] == "Ready" and (c["status"] == "True") == ready
                                   for c in p["status"].get("conditions", []))]


def test_a_killed_model_container_is_restarted_and_the_endpoint_recovers(demo: Demo):
    api = demo.api
    (pod,) = serving_pods(api, ready=True)
    model = next(c for c in pod["status"]["containerStatuses"] if c["name"] == "model")
    container_id = model["containerID"].split("://", 1)[1]
    out = api.containerd("task", "kill", "--signal", "SIGKILL", container_id)
    assert out.returncode == 0, out.stderr
    wait(lambda: next(c for c in api.get("pod", pod["metadata"]["name"], NS)["status"]["containerStatuses"]
                      if c["name"] == "model")["restartCount"] > model["restartCount"], 60, "the kubelet restart")
    wait(lambda: demo.infer(infer_body(digits(1)))[0] == 200, 180, "the endpoint to answer 200 again", interval=2)
    assert cond(api, "Ready")["status"] == "True"
    assert [p["metadata"]["name"] for p in serving_pods(api)] == [pod["metadata"]["name"]]  # restarted, not replaced


def test_a_serving_only_change_rolls_out_without_a_training_job(demo: Demo):
    """Two replicas and a new rate limit: the pod template changes (serving config), the training version does
    not. On this 2-CPU node the surge pod must fit beside the old one (issue 14: 1.2 CPU per pod did not)."""
    api = demo.api
    config_before = api.get("deployment", MODEL, NS)["spec"]["template"]["metadata"]["annotations"]
    api.kubectl("-n", NS, "patch", "hm", MODEL, "--type=merge", "-p", json.dumps(
        {"spec": {"serving": {"replicas": 2, "rateLimit": {"perKey": {"requestsPerSecond": 6, "burst": 12}}}}}))
    wait(lambda: status(api).get("observedGeneration") == 2, 30, "the operator to see generation 2")
    api.kubectl("-n", NS, "wait", "--for=condition=Ready", f"hm/{MODEL}", "--timeout=600s", timeout=660)
    dep = api.get("deployment", MODEL, NS)
    assert dep["spec"]["replicas"] == 2 and dep["status"]["updatedReplicas"] == 2 == dep["status"]["readyReplicas"]
    assert dep["spec"]["template"]["metadata"]["annotations"]["hardened.dev/serving-config"] != \
        config_before["hardened.dev/serving-config"]
    assert len(api.items("jobs", NS, TRAIN_SELECTOR)) == 1
    assert len(serving_pods(api, ready=True)) == 2
    demo.routed()
    assert demo.infer(infer_body(digits(1)))[0] == 200


def test_tls_with_client_certificates_through_the_service(demo: Demo, tmp_path):
    """serving.tls with a kubernetes.io/tls Secret (as cert-manager writes it) and a client CA: a serving-only
    rollout; the Service's port is https/443; a client with the CA and a client certificate gets 200, one
    without a certificate and plain HTTP get no answer; the probes (admin port, plain HTTP) keep the pods
    Ready. Issue 16."""
    import http.client as http_client
    import ssl

    from hardened_operator import devcerts

    api = demo.api
    cluster_ip = api.get("service", MODEL, NS)["spec"]["clusterIP"]
    ca, ca_key = devcerts.make_ca("e2e CA")
    crt, key = devcerts.issue(ca, ca_key, MODEL, hosts=(cluster_ip, f"{MODEL}.{NS}.svc"))
    client_ca, client_ca_key = devcerts.make_ca("e2e callers")
    client_crt, client_key = devcerts.issue(client_ca, client_ca_key, "e2e-client", client=True)
    api.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "digits-tls"}, "type": "kubernetes.io/tls",
               "stringData": {"tls.crt": crt.decode(), "tls.key": key.decode()}},
              {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "callers-ca"},
               "stringData": {"ca.crt": client_ca.decode()}}, namespace=NS)
    generation = status(api)["observedGeneration"]
    api.kubectl("-n", NS, "patch", "hm", MODEL, "--type=merge", "-p", json.dumps(
        {"spec": {"serving": {"tls": {"secretName": "digits-tls", "clientCASecret": "callers-ca"}}}}))
    wait(lambda: status(api).get("observedGeneration") == generation + 1, 30, "the operator to see the change")
    api.kubectl("-n", NS, "wait", "--for=condition=Ready", f"hm/{MODEL}", "--timeout=600s", timeout=660)
    wait(lambda: all(c["name"] != "ratelimit" or "--tls-cert" in c["args"] for p in serving_pods(api, ready=True)
                     for c in p["spec"]["containers"]) and len(serving_pods(api)) == 2, 300,
         "every serving pod to run with TLS")
    svc = api.get("service", MODEL, NS)
    assert svc["spec"]["ports"][0]["name"] == "https" and svc["spec"]["ports"][0]["port"] == 443
    assert len(api.items("jobs", NS, TRAIN_SELECTOR)) == 1  # serving-only: no new training
    assert status(api)["serving"]["url"] == f"https://{MODEL}.{NS}.svc"
    demo.routed()  # the new port 443
    devcerts.write(tmp_path / "ca.crt", ca)
    devcerts.write(tmp_path / "client.crt", client_crt)
    devcerts.write(tmp_path / "client.key", client_key, private=True)
    mutual = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    mutual.load_cert_chain(tmp_path / "client.crt", tmp_path / "client.key")
    demo.tls = mutual  # the later steps call the endpoint as this client, whatever happens below
    anonymous = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    # No client certificate: TLS 1.3 refuses it after the client's side of the handshake, so the error surfaces
    # while sending (URLError) or while reading the answer (SSLError, a reset): any OSError, never an answer.
    with pytest.raises(OSError):
        http("POST", demo.url(), infer_body(digits(1)), {"Authorization": f"Bearer {demo.key}"}, timeout=20,
             context=anonymous)
    plain = demo.url().replace("https://", "http://")
    with pytest.raises((OSError, http_client.HTTPException)):  # plain HTTP to the TLS port: no HTTP answer
        http("POST", plain, infer_body(digits(1)), {"Authorization": f"Bearer {demo.key}"}, timeout=20)
    code, body, headers = demo.infer(infer_body(digits(1)))
    assert code == 200 and body["outputs"][0]["shape"] == [1, 10], body
    assert headers["RateLimit-Policy"] == '"default";q=12;w=2'  # the serving-only change's bucket (6/s, 12)
    assert demo.infer(infer_body(digits(1)), key=None)[0] == 401


def test_a_tampered_artifact_is_refused_while_the_previous_pod_keeps_serving(demo: Demo):
    """A byte of the stored weights changes after verification; a serving pod is deleted; its replacement's
    init container refuses the bytes; the other pod keeps serving; status and an Event say why. Then the
    byte is put back and the replacement starts."""
    api = demo.api
    weights = demo.version_dir() / MODEL_DIR_NAME / "model.safetensors"
    original = weights.read_bytes()
    tampered = bytearray(original)
    tampered[-1] ^= 0x01
    weights.write_bytes(bytes(tampered))
    try:
        victim, survivor = serving_pods(api, ready=True)
        api.kubectl("-n", NS, "delete", "pod", victim["metadata"]["name"], "--wait=false")
        wait(lambda: cond(api, "ServingReady").get("reason") == "ArtifactRefused", 180,
             "ServingReady ArtifactRefused", interval=1)
        st = status(api)
        assert st["phase"] == "Failed" and st["lastFailure"]["reason"] == "ArtifactRefused"
        message = cond(api, "ServingReady")["message"]
        assert "verify-model refused the artifact" in message and "1 ready pod(s) of the previous rollout keep serving" \
            in message
        events = api.kubectl("-n", NS, "get", "events", f"--field-selector=involvedObject.name={MODEL}",
                             "-o", "json").stdout
        assert any(e["reason"] == "ArtifactRefused" and e["type"] == "Warning" for e in json.loads(events)["items"])
        for _ in range(5):  # the survivor answers meanwhile, through the Service
            assert demo.infer(infer_body(digits(1)))[0] == 200
        assert survivor["metadata"]["name"] in [p["metadata"]["name"] for p in serving_pods(api, ready=True)]
    finally:
        weights.write_bytes(original)
    for pod in serving_pods(api, ready=False):  # skip the crash-loop back-off
        api.kubectl("-n", NS, "delete", "pod", pod["metadata"]["name"], "--wait=false")
    api.kubectl("-n", NS, "wait", "--for=condition=Ready", f"hm/{MODEL}", "--timeout=300s", timeout=360)
    assert status(api)["phase"] == "Serving" and "lastFailure" not in status(api)


FORGER_WRAPPER = """#!/bin/sh
# The forger: the operator sets HARDENED_TRAINER_IMAGE to the training pod's own image; this claims the
# genuine trainer's instead, in the provenance the trainer writes and signs with the key it holds.
export HARDENED_TRAINER_IMAGE='{genuine}'
PATH=${{PATH#/opt/forge/bin:}}
exec python "$@"
"""


def undo_merge_patch(before: dict, patch: dict) -> dict:
    """The merge patch that puts back in ``before`` what ``patch`` changes (null: a member it added)."""
    return {k: undo_merge_patch(before[k], v) if isinstance(v, dict) and isinstance(before.get(k), dict)
            else before.get(k) for k, v in patch.items()}


def settled(api: Cluster, version: str, type_: str) -> dict | None:
    """Condition ``type_`` once it is True or False for training version ``version`` (None before)."""
    st = status(api)
    if (st.get("training") or {}).get("configDigest") != version:
        return None
    c = next((c for c in st.get("conditions", []) if c["type"] == type_), {})
    return c if c.get("status") in ("True", "False") else None


def build_forging_trainer(genuine: str, workdir: pathlib.Path) -> str:
    """A trainer image derived from the genuine one that writes the genuine image's name into its provenance.
    The training Job's command is `python -m hardened_trainer` (objects.TRAINER_COMMAND), found through PATH:
    here `python` is the wrapper, first on PATH, which sets the claim and runs the real python."""
    from cluster import build_image, image_parts

    workdir.mkdir(parents=True, exist_ok=True)
    wrapper = workdir / "python"
    wrapper.write_text(FORGER_WRAPPER.format(genuine=genuine))
    wrapper.chmod(0o755)
    (workdir / "Dockerfile").write_text(
        f"FROM {genuine}\n"
        "COPY python /opt/forge/bin/python\n"
        "ENV PATH=/opt/forge/bin:$PATH\n"
        'ENTRYPOINT ["/opt/forge/bin/python", "-m", "hardened_trainer"]\n')
    return build_image(f"localhost/hardened-model/forging-trainer:{image_parts(genuine)[1]}",
                       workdir / "Dockerfile", workdir, base=genuine)


def test_a_trainer_that_forges_its_provenance_is_refused_while_the_served_version_keeps_serving(
        demo: Demo, tmp_path):
    """Issue 27 point 4 on the real cluster: the trainer holds the signing key and writes its own provenance, so
    an image may claim an allowed name. A derived trainer image claims the genuine e2e trainer's reference; the
    spec allows the genuine trainer's repository only. Training succeeds; the verify Job, given what the kubelet
    ran for the training pod, refuses the version naming both images; the served digest keeps serving through
    the Service. Then the spec goes back: its version (the genuine trainer's) serves again without training."""
    from cluster import image_parts
    from hardened_model.provenance import read as read_provenance
    from hardened_model.provenance import summarize

    api = demo.api
    genuine = demo.images["trainer"]
    t0 = time.monotonic()
    forger = build_forging_trainer(genuine, tmp_path / "forger")
    FIGURES["forger_build_s"] = time.monotonic() - t0
    assert forger != genuine and image_parts(forger)[0] != image_parts(genuine)[0]

    before = status(api)
    served, version_before = before["serving"]["servedDigest"], before["training"]["configDigest"]
    spec = api.get("hm", MODEL, NS)["spec"]
    trainings_before = {j["metadata"]["name"] for j in api.items("jobs", NS, TRAIN_SELECTOR)}
    generation = before["observedGeneration"]
    # A new version (training.image is training-relevant), trained small to be quick (helpers.TINY: 300 digits,
    # 2 epochs, gates a tiny run passes: the trainer itself fails on a missed gate); its trainer requests a
    # quarter CPU, to fit beside the two serving pods (0.7 CPU each) on a 2-CPU node
    forged = {"spec": merge_patch(TINY, {
        "training": {"image": forger, "resources": {"cpu": "250m"}},
        "signing": {"provenance": {"allowedTrainerImages": [image_parts(genuine)[0]]}}})}
    restore = {"spec": undo_merge_patch(spec, forged["spec"])}
    t0 = time.monotonic()
    api.kubectl("-n", NS, "patch", "hm", MODEL, "--type=merge", "-p", json.dumps(forged))
    try:
        wait(lambda: status(api).get("observedGeneration") == generation + 1, 60, "the operator to see the forger")
        version = status(api)["training"]["configDigest"]
        assert version != version_before
        job = f"{MODEL}-train-{version}"
        wait(lambda: api.get("job", job, NS), 60, f"the training Job {job}")
        trained = wait(lambda: settled(api, version, "TrainingSucceeded"), 900, "the forger's training to end",
                       interval=2)
        assert trained["status"] == "True", trained
        FIGURES["forger_patch_to_trained_s"] = time.monotonic() - t0
        pod = api.items("pods", NS, f"job-name={job}")[0]
        assert pod["spec"]["containers"][0]["image"] == forger  # what the kubelet ran
        # the forgery itself: the signed provenance of the new version claims the genuine image
        claim = summarize(read_provenance(demo.store / MODEL / version / MODEL_DIR_NAME))
        assert claim.trainer_image == genuine, claim

        t1 = time.monotonic()
        verified = wait(lambda: settled(api, version, "SignatureVerified"), 300, "the verify Job's verdict",
                        interval=1)
        assert (verified["status"], verified["reason"]) == ("False", "VerificationFailed"), verified
        FIGURES["forger_trained_to_refused_s"] = time.monotonic() - t1
        st = status(api)
        message = verified["message"]
        assert (f'the provenance says the model was trained by "{genuine}", but the kubelet ran "{forger}"'
                in message), message
        assert (f'signing.provenance.allowedTrainerImages: the model was trained by "{forger}" (the kubelet ran it '
                "for the training pod), which matches none of") in message, message
        assert (cond(api, "GatesPassed")["status"], cond(api, "GatesPassed")["reason"]) == ("Unknown", "NotChecked")
        assert st["phase"] == "Failed" and cond(api, "Ready")["status"] == "False"
        assert st["lastFailure"]["stage"] == "verification" and st["lastFailure"]["reason"] == "VerificationFailed"
        assert f'but the kubelet ran "{forger}"' in st["lastFailure"]["message"]
        assert f"version {version_before} keeps serving" in cond(api, "Ready")["message"]
        events = json.loads(api.kubectl("-n", NS, "get", "events", f"--field-selector=involvedObject.name={MODEL}",
                                        "-o", "json").stdout)["items"]
        assert any(e["type"] == "Warning" and f'but the kubelet ran "{forger}"' in e.get("message", "")
                   for e in events), [e.get("message") for e in events][-5:]

        # the served version keeps serving: same digest in status, the Deployment and every pod, and answers.
        # The new provenance policy reaches the init containers (a rollout of the same digest): wait it out.
        t1 = time.monotonic()
        wait(lambda: cond(api, "ServingReady").get("status") == "True", 600,
             "the served version's pods to be ready under the new provenance policy", interval=2)
        FIGURES["forger_refused_to_serving_ready_s"] = time.monotonic() - t1
        assert status(api)["serving"]["servedDigest"] == served
        assert api.get("deployment", MODEL, NS)["metadata"]["annotations"]["hardened.dev/digest"] == served
        for p in serving_pods(api):
            args = next(c for c in p["spec"]["containers"] if c["name"] == "model")["args"]
            assert args[args.index("--expect-digest") + 1] == served, p["metadata"]["name"]
        # kube-proxy follows the rollout's endpoints a moment later (seconds on a busy node)
        wait(lambda: demo.infer(infer_body(digits(1)))[0] == 200, 60, "the Service to answer 200", interval=1)
        codes = []
        for _ in range(5):
            codes.append(demo.infer(infer_body(digits(1)))[0])
            time.sleep(0.3)
        assert codes == [200] * 5, codes
        assert status(api)["phase"] == "Failed" and status(api)["serving"]["servedDigest"] == served
    finally:
        t1 = time.monotonic()
        api.kubectl("-n", NS, "patch", "hm", MODEL, "--type=merge", "-p", json.dumps(restore))
    wait(lambda: status(api).get("observedGeneration") == generation + 2, 60, "the operator to see the spec back")
    api.kubectl("-n", NS, "wait", "--for=condition=Ready", f"hm/{MODEL}", "--timeout=600s", timeout=660)
    FIGURES["forger_restored_to_ready_s"] = time.monotonic() - t1
    st = status(api)
    assert st["phase"] == "Serving" and st["training"]["configDigest"] == version_before
    assert st["serving"]["servedDigest"] == served and "lastFailure" not in st
    # no training for the version back: the forger's Job is the only new one
    assert {j["metadata"]["name"] for j in api.items("jobs", NS, TRAIN_SELECTOR)} == trainings_before | {job}
    wait(lambda: demo.infer(infer_body(digits(1)))[0] == 200, 60, "the Service to answer 200", interval=1)
    print(f"forging trainer: build {FIGURES['forger_build_s']:.1f}s, patch -> trained "
          f"{FIGURES['forger_patch_to_trained_s']:.1f}s, trained -> refused "
          f"{FIGURES['forger_trained_to_refused_s']:.1f}s, refused -> served version ready "
          f"{FIGURES['forger_refused_to_serving_ready_s']:.1f}s, spec restored -> Ready "
          f"{FIGURES['forger_restored_to_ready_s']:.1f}s")


def _rollback(api: Cluster, *args: str) -> str:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "hardened_operator.cli", "rollback", MODEL, "-n", NS, *args],
                         capture_output=True, text=True, env=api.env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _serves(api: Cluster, digest: str, generation: int, timeout: float = 600) -> None:
    """Wait until the operator saw ``generation`` and the model is Ready serving ``digest``."""
    def done():
        st = status(api)
        ready = next((c for c in st.get("conditions", []) if c["type"] == "Ready"), {})
        return st.get("observedGeneration", 0) >= generation and ready.get("status") == "True" \
            and (st.get("serving") or {}).get("servedDigest") == digest
    wait(done, timeout, f"Ready serving {digest[:16]}", interval=1)


def test_a_rollback_serves_the_earlier_version_again_without_training(demo: Demo):
    """Issue 29 point 3: a second version trains and serves; `hardened-model rollback` pins the first one
    (spec.serving.version): it serves again with no training Job, its pods verify it again (digest and the
    platform countersignature its record kept); `rollback --clear` returns to the second, again untrained."""
    from hardened_model.countersign import verify as verify_envelope

    api = demo.api
    st = status(api)
    v1, d1, generation = st["training"]["configDigest"], st["serving"]["servedDigest"], st["observedGeneration"]
    # one replica: the 2-CPU node then has room for the training pod beside the serving one
    api.kubectl("-n", NS, "patch", "hm", MODEL, "--type=merge", "-p",
                json.dumps({"spec": {"training": {"seed": 1}, "serving": {"replicas": 1}}}))
    wait(lambda: status(api).get("observedGeneration") == generation + 1, 60, "the operator to see the new seed")
    wait(lambda: (status(api).get("serving") or {}).get("servedDigest") not in (None, d1)
         and status(api).get("phase") == "Serving", 900, "the second version serving", interval=2)
    st = status(api)
    v2, d2 = st["training"]["configDigest"], st["serving"]["servedDigest"]
    assert [e["version"] for e in st["history"][:2]] == [v2, v1]
    trainings = {j["metadata"]["name"] for j in api.items("jobs", NS, TRAIN_SELECTOR)}

    t0 = time.monotonic()
    assert v1 in _rollback(api)
    _serves(api, d1, generation + 2)
    FIGURES["rollback_to_ready_s"] = time.monotonic() - t0
    st = status(api)
    assert {j["metadata"]["name"] for j in api.items("jobs", NS, TRAIN_SELECTOR)} == trainings  # no training
    assert st["history"][0]["version"] == v1 and st["history"][1]["version"] == v2
    assert st["history"][1]["stopped"] == f"rolled back to version {v1} (spec.serving.version)"
    dep = api.get("deployment", MODEL, NS)
    args = next(c for c in dep["spec"]["template"]["spec"]["initContainers"] if c["name"] == "verify-model")["args"]
    assert args[args.index("--expect-digest") + 1] == d1
    statement = verify_envelope(args[args.index("--countersignature") + 1],
                                args[args.index("--platform-public-key-pem") + 1])
    assert statement["subject"][0]["digest"]["sha256"] == d1
    demo.routed()
    wait(lambda: demo.infer(infer_body(digits(1)))[0] == 200, 60, "the Service to answer 200", interval=1)

    t0 = time.monotonic()
    assert "removed" in _rollback(api, "--clear")
    _serves(api, d2, generation + 3)
    FIGURES["unpin_to_ready_s"] = time.monotonic() - t0
    assert {j["metadata"]["name"] for j in api.items("jobs", NS, TRAIN_SELECTOR)} == trainings
    assert status(api)["history"][0]["version"] == v2
    print(f"rollback -> Ready {FIGURES['rollback_to_ready_s']:.1f}s, --clear -> Ready "
          f"{FIGURES['unpin_to_ready_s']:.1f}s, no training Job either way")


def test_deleting_the_model_garbage_collects_every_child(demo: Demo):
    api = demo.api
    api.kubectl("-n", NS, "delete", "hm", MODEL, "--wait=true", "--timeout=60s", timeout=90)
    selector = f"hardened.dev/model={MODEL}"
    kinds = "jobs,pods,deployments,replicasets,services,configmaps,networkpolicies,poddisruptionbudgets"

    def left():
        return [f"{o['kind']}/{o['metadata']['name']}" for o in
                json.loads(api.kubectl("-n", NS, "get", kinds, "-l", selector, "-o", "json").stdout)["items"]]
    wait(lambda: not left(), 120, "the garbage collector")
    # generated credentials are kept on purpose: a re-created model keeps its clients' API key
    assert api.get("secret", f"{MODEL}-api-keys", NS) is not None
