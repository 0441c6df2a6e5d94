"""signing.method ephemeral (issue 27 point 4): the trainer's per-run key is the one trust root, read from the
training pod's status for the verify Job, from the verify Job for the serving pods, never from a record."""
import pytest

from hardened_model.signing import generate_key_pem
from hardened_model.spec import parse_manifest
from hardened_operator import records, runkeys
from hardened_operator.manifests import commands, jobs, objects
from hardened_operator.reconcile import Observed, decide, observe
from helpers import example

DIGEST = "ab" * 32
NOW = "2026-12-04T05:00:00Z"
VERIFIED = {"verified": True, "digest": DIGEST, "signer": "s", "gatesPassed": True, "metrics": {"epsilon": 7.9}}


def ephemeral_model():
    doc = example("digits-demo")
    doc["metadata"].update(uid="u-1", generation=3)
    signing = {k: v for k, v in doc["spec"]["signing"].items() if k not in ("privateKeySecret", "publicKeySecret")}
    doc["spec"]["signing"] = {**signing, "method": "ephemeral"}
    doc["spec"]["serving"] = {**doc["spec"]["serving"], "replicas": 1}
    return parse_manifest(doc)


def job(done=None):
    return {"metadata": {"name": "j"},
            "status": {"conditions": [{"type": done, "status": "True"}] if done else []}}


def finished(built: dict, done="Complete") -> dict:
    return {**built, "status": job(done)["status"]}


def trust_args(container: dict) -> list[str]:
    args = container["args"]
    return [a for i, a in enumerate(args) if a.startswith("--public-key") or i and args[i - 1] == "--public-key-pem"]


def test_the_training_pod_holds_no_key_and_no_token():
    m = ephemeral_model()
    pod = jobs.build_training_job(m)["spec"]["template"]["spec"]
    assert {v["name"] for v in pod["volumes"]} == {"config", "work", "tmp", "artifacts"}
    assert '"privateKeyPath"' not in jobs.build_training_configmap(m)["data"]["train.json"]


def test_the_verify_job_trusts_the_key_the_training_pod_reported_and_mounts_no_key():
    m, (_, pem) = ephemeral_model(), generate_key_pem()
    obs = Observed(train_job=job("Complete"), train_message={"gatesPassed": True, "signingKey": pem},
                   train_run_key=pem)
    [verify] = [o for o in decide(m, obs, {}, now=NOW).ensure if o["kind"] == "Job"]
    container = verify["spec"]["template"]["spec"]["containers"][0]
    assert trust_args(container) == ["--public-key-pem", pem]
    assert "trust" not in {v["name"] for v in verify["spec"]["template"]["spec"]["volumes"]}
    assert runkeys.verified_with(verify) == pem


def test_without_a_reported_key_no_verify_job_starts_and_status_says_why():
    m = ephemeral_model()
    d = decide(m, Observed(train_job=job("Complete"), train_message={"gatesPassed": True}), {}, now=NOW)
    assert not [o for o in d.ensure if o["kind"] in ("Job", "Deployment")]
    cond = {c["type"]: c for c in d.status["conditions"]}["SignatureVerified"]
    assert cond["status"] == "False" and "no per-run public key" in cond["message"], cond


@pytest.mark.parametrize("value", [None, 42, "not a key", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
                                   "rsa"])
def test_only_an_ec_public_key_counts_as_reported(value):
    if value == "rsa":
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        value = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    assert runkeys.reported({"signingKey": value}) is None
    assert runkeys.reported({"signingKey": generate_key_pem()[1]}) is not None


class Kube:
    """observe's reads: the Jobs, their pods (gone: none), the version's record, no policy."""

    def __init__(self, objs):
        self.objs = objs

    def get(self, kind, ns, name):
        return self.objs.get((kind, name))

    def list(self, kind, ns, selector):
        return []

    def list_cluster(self, kind):
        return []

    def crd_exists(self, name):
        return False


def test_a_key_in_the_versions_record_is_never_trusted():
    """The record ConfigMap is writable by whoever may write ConfigMaps in the namespace: with the Jobs' pods
    gone, a key read back from it must not become one the verifiers trust. Before the verify Job exists the
    record is not read at all (no verify Job starts); after, the serving pods trust the key the operator gave
    that Job, whatever the record says."""
    m, (_, genuine), (_, forged) = ephemeral_model(), generate_key_pem(), generate_key_pem()
    n = objects.names(m)
    record = records.build(m, train_message={"gatesPassed": True, "signingKey": forged}, observed_trainer=None,
                           verify_message=VERIFIED)
    obs = observe(Kube({("Job", n.train): job("Complete"), ("ConfigMap", n.record): record}), m)
    assert obs.train_run_key is None
    assert not [o for o in decide(m, obs, {}, now=NOW).ensure if o["kind"] == "Job"]

    verify = finished(jobs.build_verify_job(m, trusted_keys=(genuine,)))
    obs = observe(Kube({("Job", n.train): job("Complete"), ("Job", n.verify): verify,
                        ("ConfigMap", n.record): record}), m)
    assert obs.verify_from_record and obs.train_message["signingKey"] == forged and obs.train_run_key is None
    [dep] = [o for o in decide(m, obs, {}, now=NOW).ensure if o["kind"] == "Deployment"]
    assert trust_args(dep["spec"]["template"]["spec"]["initContainers"][0]) == ["--public-key-pem", genuine]


def test_the_serving_pods_trust_the_key_their_verify_job_verified_with_and_keep_it_after_the_jobs_go():
    m, (_, pem), (_, other) = ephemeral_model(), generate_key_pem(), generate_key_pem()
    obs = Observed(train_job=job("Complete"), train_message={"gatesPassed": True, "signingKey": other},
                   train_run_key=other)
    verify = jobs.build_verify_job(m, trusted_keys=(pem,))  # the Job as the operator created it, with its key
    obs.verify_job, obs.verify_message = finished(verify), VERIFIED
    [dep] = [o for o in decide(m, obs, {}, now=NOW).ensure if o["kind"] == "Deployment"]
    pod = dep["spec"]["template"]["spec"]
    for container in (pod["initContainers"][0], pod["containers"][0]):
        assert trust_args(container) == ["--public-key-pem", pem], container["name"]
    assert dep["metadata"]["annotations"][objects.RUN_KEY_ANNOTATION] == pem
    assert "trust" not in {v["name"] for v in pod["volumes"]}

    gone = Observed(train_job=job("Complete"), verify_job=job("Complete"), deployment=dep)  # pods and record gone
    [again] = [o for o in decide(m, gone, {}, now=NOW).ensure if o["kind"] == "Deployment"]
    assert again == dep

    edited = {**dep, "metadata": {**dep["metadata"], "annotations": {
        k: v for k, v in dep["metadata"]["annotations"].items() if k != objects.RUN_KEY_ANNOTATION}}}
    d = decide(m, Observed(train_job=job("Complete"), verify_job=job("Complete"), deployment=edited), {}, now=NOW)
    assert not [o for o in d.ensure if o["kind"] == "Deployment"]  # no key: nothing is rebuilt to trust


def test_the_command_builder_refuses_an_ephemeral_model_without_its_key():
    m = ephemeral_model()
    layout = objects.cluster_layout(m)
    with pytest.raises(ValueError, match="no per-run public key"):
        commands.verify(m, layout)
    pem = generate_key_pem()[1]
    assert trust_args({"args": commands.serve(m, layout, digest=DIGEST, trusted_keys=(pem,))}) == [
        "--public-key-pem", pem]
