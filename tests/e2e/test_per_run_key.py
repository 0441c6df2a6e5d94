"""A per-run signing key on the real cluster (issue 27 point 4): under a HardenedModelPolicy with
trust.ephemeralKeys, the trainer signs with a key made in its pod for the run, the kubelet records the public
half in the pod's status, and that key alone is what the verify Job and the serving pods trust; no private
key exists in the model's namespace, in its Secrets, its store or any pod spec.

The steps share one model and run in order. The suite's operator countersigns (conftest), and the policy
requires it. What only the cluster can judge is here: the chart's admission policy (its CEL on the real
apiserver), the termination message as the kubelet keeps it, the pods the apiserver admits with no key
volume. What a forged key changes is judged again here, on the serving pods' init container.
"""
from __future__ import annotations

import base64
import json
import pathlib

import pytest
import yaml

from cluster import Cluster, hostpath_store, restart_operator, wait
from hardened_model.signing import MODEL_DIR_NAME, SIGNATURE_NAME, TrustPolicy, generate_key_pem, sign_model, \
    verify_model
from helpers import example

NS = "e2e-runkey"
DUMP_NAMESPACES = [NS]
MODEL = "digits-demo"
POLICY = "e2e-per-run-keys"
TRAIN_SELECTOR = f"hardened.dev/model={MODEL},app.kubernetes.io/component=training"
SERVING_SELECTOR = f"hardened.dev/model={MODEL},app.kubernetes.io/component=serving"
EPHEMERAL = {"mode": "Enforce", "method": "ephemeral"}


def status(api: Cluster) -> dict:
    return (api.get("hm", MODEL, NS) or {}).get("status") or {}


def manifest(images: dict, signing: dict) -> dict:
    doc = example(MODEL)
    doc["metadata"]["namespace"] = NS
    doc["spec"]["training"]["image"] = images["trainer"]
    doc["spec"]["serving"]["image"] = images["server"]
    doc["spec"]["signing"] = signing
    return doc


class Run:
    def __init__(self, api: Cluster, images: dict, store: pathlib.Path):
        self.api, self.images, self.store = api, images, store
        self.key = ""  # the per-run public key, as the training pod's status holds it

    def version_dir(self) -> pathlib.Path:
        return self.store / MODEL / status(self.api)["training"]["configDigest"]


@pytest.fixture(scope="module")
def run(cluster: Cluster, operator) -> Run:
    if not cluster.shared:
        pytest.skip("e2e: the per-run key steps use the shared cluster's node (a hostPath volume)")
    api = cluster
    api.namespace(NS, **{"pod-security.kubernetes.io/enforce": "restricted", "e2e-per-run-keys": "yes"})
    store = hostpath_store(api, NS, "e2e-runkey-artifacts", "unused-signing")
    api.kubectl("-n", NS, "delete", "secret", "unused-signing")  # this namespace holds no signing key at all
    api.apply({"apiVersion": "hardened.dev/v1alpha1", "kind": "HardenedModelPolicy", "metadata": {"name": POLICY},
               "spec": {"namespaceSelector": {"matchLabels": {"e2e-per-run-keys": "yes"}},
                        "trust": {"ephemeralKeys": True, "requireCountersignature": True}}})
    yield Run(api, operator, store)
    api.delete_namespace(NS)
    api.kubectl("delete", "hmp", POLICY, "--ignore-not-found", check=False)
    api.kubectl("delete", "pv", "e2e-runkey-artifacts", "--ignore-not-found", "--wait=false", check=False)


def test_the_policy_refuses_a_key_secret_at_apply_and_admits_a_per_run_key(run: Run):
    """The chart's admission policy on the real apiserver: the new trust root's line, word for word."""
    api = run.api
    keyed = manifest(run.images, {"mode": "Enforce", "method": "key"})

    def dry_run(doc):
        return api.kubectl("create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc), check=False)

    wait(lambda: "trust.ephemeralKeys" in dry_run(keyed).stderr, 60, "the admission policy to see the policy")
    refused = dry_run(keyed)
    assert refused.returncode != 0
    assert (f'HardenedModelPolicy {POLICY}: spec.signing.method: "key"; the policy trusts per-run keys only '
            '(trust.ephemeralKeys)') in refused.stderr, refused.stderr
    assert dry_run(manifest(run.images, EPHEMERAL)).returncode == 0


def test_a_per_run_key_trains_verifies_and_serves_with_no_private_key_anywhere(run: Run):
    api = run.api
    api.apply(manifest(run.images, EPHEMERAL), namespace=NS)
    api.kubectl("-n", NS, "wait", "--for=condition=Ready", f"hm/{MODEL}", "--timeout=900s", timeout=960)
    st = status(api)
    assert st["phase"] == "Serving", st
    # the kubelet's record of the trainer's message holds the key; the training pod mounted no Secret
    [pod] = api.items("pods", NS, TRAIN_SELECTOR)
    [trainer] = [c for c in pod["status"]["containerStatuses"] if c["name"] == "trainer"]
    run.key = json.loads(trainer["state"]["terminated"]["message"])["signingKey"]
    assert run.key.startswith("-----BEGIN PUBLIC KEY-----")
    assert not [v for v in pod["spec"]["volumes"] if "secret" in v or "projected" in v], pod["spec"]["volumes"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    # the verify Job and every serving container that verifies trust that key and no other
    verify = api.get("job", f"{MODEL}-verify-{st['training']['configDigest']}", NS)
    dep = api.get("deployment", MODEL, NS)
    pod_spec = dep["spec"]["template"]["spec"]
    for container in (verify["spec"]["template"]["spec"]["containers"][0], pod_spec["initContainers"][0],
                      next(c for c in pod_spec["containers"] if c["name"] == "model")):
        args = container["args"]
        assert "--public-key" not in args and args.count("--public-key-pem") == 1, container["name"]
        assert args[args.index("--public-key-pem") + 1] == run.key, container["name"]
    assert dep["metadata"]["annotations"]["hardened.dev/run-key"] == run.key
    # the stored version verifies with the run's key, to the digest served; no private key anywhere here
    version = run.version_dir()
    res = verify_model(version / MODEL_DIR_NAME, version / SIGNATURE_NAME, TrustPolicy(public_keys_pem=(run.key,)))
    assert res.verified and res.digest == st["serving"]["servedDigest"], res.reason
    assert not [p for p in run.store.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()]
    for secret in api.items("secrets", NS):
        for value in (secret.get("data") or {}).values():
            assert b"PRIVATE KEY" not in base64.b64decode(value), secret["metadata"]["name"]
    assert "hardened.dev/countersignature" in dep["metadata"]["annotations"]


def test_a_key_planted_in_the_record_and_a_signature_made_with_it_are_refused(run: Run):
    """Someone who may write ConfigMaps and the artifact store puts their own key into the version's record and
    re-signs the served files with it (the digest unchanged, so the pin and the countersignature still hold).
    The Jobs' pods are deleted, so the restarted operator reads the record back (issue 29): it keeps trusting
    the run's key, and a new serving pod's init container refuses the signature. The genuine signature put
    back, the pod starts."""
    api = run.api
    before = {c["type"]: c["status"] for c in status(api)["conditions"]}
    private, forged = generate_key_pem()
    record_name = f"{MODEL}-version-{status(api)['training']['configDigest']}"
    record = api.get("configmap", record_name, NS)
    training = json.loads(record["data"]["training.json"])
    training["report"]["signingKey"] = forged
    api.kubectl("-n", NS, "patch", "configmap", record_name, "--type=merge", "-p",
                json.dumps({"data": {"training.json": json.dumps(training, sort_keys=True)}}))
    version = run.version_dir()
    signature = version / SIGNATURE_NAME
    genuine = signature.read_bytes()
    key_file = run.store.parent / "e2e-runkey-forger.pem"
    key_file.write_text(private)
    try:
        sign_model(version / MODEL_DIR_NAME, signature, private_key=key_file)
        assert verify_model(version / MODEL_DIR_NAME, signature, TrustPolicy(public_keys_pem=(forged,))).verified
        for component in ("training", "verification"):
            api.kubectl("-n", NS, "delete", "pod", "-l",
                        f"hardened.dev/model={MODEL},app.kubernetes.io/component={component}", "--wait=true")
        restart_operator(api, timeout=120)
        [old] = api.items("pods", NS, SERVING_SELECTOR)
        api.kubectl("-n", NS, "delete", "pod", old["metadata"]["name"], "--wait=false")

        def refused():
            for p in api.items("pods", NS, SERVING_SELECTOR):
                for s in p["status"].get("initContainerStatuses") or []:
                    term = (s.get("state") or {}).get("terminated") or (s.get("lastState") or {}).get("terminated")
                    if term and term.get("exitCode") == 3:
                        return term.get("message") or "exit 3"
            return None

        wait(refused, 180, "the new pod's init container to refuse the forged signature", interval=1)
        print(f"the forged signature, refused: {refused()}")
        dep = api.get("deployment", MODEL, NS)
        assert dep["metadata"]["annotations"]["hardened.dev/run-key"] == run.key  # the record changed nothing
        init = dep["spec"]["template"]["spec"]["initContainers"][0]["args"]
        assert init[init.index("--public-key-pem") + 1] == run.key and forged not in init
    finally:
        signature.write_bytes(genuine)
        key_file.unlink(missing_ok=True)
    for pod in api.items("pods", NS, SERVING_SELECTOR):  # skip the crash-loop back-off
        api.kubectl("-n", NS, "delete", "pod", pod["metadata"]["name"], "--wait=false")
    api.kubectl("-n", NS, "wait", "--for=condition=Ready", f"hm/{MODEL}", "--timeout=300s", timeout=360)
    st = status(api)
    assert st["phase"] == "Serving" and {c["type"]: c["status"] for c in st["conditions"]} == before
