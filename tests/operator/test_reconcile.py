"""decide(): the pure heart of the operator, without a cluster."""
import dataclasses
import json

from hardened_operator.manifests import jobs, objects
from hardened_operator.reconcile import Observed, decide
from hardened_model.spec import parse_manifest, to_wire
from helpers import example

DIGEST = "ab" * 32
NOW, LATER = "2026-11-22T05:00:00Z", "2026-11-22T06:00:00Z"


def model(**spec):
    doc = example("digits-demo")
    doc["metadata"].update(uid="u-1", generation=3)
    for k, v in spec.items():
        doc["spec"][k] = {**doc["spec"][k], **v}
    return parse_manifest(doc)


def job(done=None):
    conds = [{"type": done, "status": "True", "reason": "BackoffLimitExceeded" if done == "Failed" else None}] \
        if done else []
    return {"metadata": {"name": "j"}, "status": {"conditions": conds}}


def deployment(digest=DIGEST, version="v0", ready=1):
    return {"metadata": {"name": "digits-demo", "generation": 2,
                         "annotations": {"hardened.dev/digest": digest, "hardened.dev/version": version}},
            "status": {"observedGeneration": 2, "readyReplicas": ready, "updatedReplicas": ready, "replicas": ready,
                       "availableReplicas": ready}}


VERIFIED = {"verified": True, "digest": DIGEST, "signer": "s", "gatesPassed": True, "metrics": {"epsilon": 7.9}}


def rolled_out(dep: dict, replicas: int = 1, **status) -> dict:
    """``dep`` as the API server returns it once the Deployment controller finished its rollout."""
    return {**dep, "metadata": {**dep["metadata"], "generation": 1},
            "status": {"observedGeneration": 1, "readyReplicas": replicas, "updatedReplicas": replicas,
                       "replicas": replicas, "availableReplicas": replicas, **status}}


def serving(obs_status) -> tuple[Observed, object]:
    """A model whose verified version's Deployment exists, with the given Deployment status."""
    m = model(serving={"replicas": 1})
    obs = Observed(train_job=job("Complete"), verify_job=job("Complete"), verify_message=VERIFIED)
    dep = next(o for o in decide(m, obs, {}, now=NOW).ensure if o["kind"] == "Deployment")
    obs.deployment = rolled_out(dep, **obs_status)
    return obs, m


def conditions(d) -> dict:
    return {c["type"]: c for c in d.status["conditions"]}


def kinds(decision):
    return [o["kind"] for o in decision.ensure]


def test_new_model_creates_the_training_job_and_reports_training():
    d = decide(model(), Observed(), {}, now=NOW)
    assert kinds(d) == ["NetworkPolicy", "ConfigMap", "Job"]  # the Job pods are fenced in before they start
    assert d.status["phase"] == "Training" and d.status["observedGeneration"] == 3
    assert d.events[0][1] == "Training"


def test_the_same_world_gives_the_same_status_and_no_event():
    obs = Observed(train_job=job())
    first = decide(model(), obs, {}, now=NOW)
    again = decide(model(), obs, first.status, now=LATER)
    assert again.status == first.status and again.events == []  # lastTransitionTime kept


def test_verified_version_rolls_out_and_then_serves():
    m = model(serving={"replicas": 1})
    obs = Observed(train_job=job("Complete"), verify_job=job("Complete"), verify_message=VERIFIED)
    d = decide(m, obs, {}, now=NOW)
    dep = next(o for o in d.ensure if o["kind"] == "Deployment")
    assert dep["metadata"]["annotations"]["hardened.dev/digest"] == DIGEST and d.status["phase"] == "RollingOut"
    obs.deployment = rolled_out(dep)
    d = decide(m, obs, d.status, now=LATER)
    assert d.status["phase"] == "Serving"
    assert {c["type"]: c["status"] for c in d.status["conditions"]}["Ready"] == "True"


def test_warn_mode_serves_a_gate_failure_with_a_warning_but_never_a_bad_signature():
    m = model(signing={"mode": "Warn"}, serving={"replicas": 1})
    gates_failed = {**VERIFIED, "gatesPassed": False, "reason": "gates failed: minRobustAccuracy"}
    obs = Observed(train_job=job("Complete"), verify_job=job("Failed"), verify_message=gates_failed)
    d = decide(m, obs, {}, now=NOW)
    assert "Deployment" in kinds(d) and ("Warning", "GatesFailedWarnMode") == d.events[0][:2]
    bad_sig = Observed(train_job=job("Complete"), verify_job=job("Failed"),
                       verify_message={"verified": False, "reason": "Key mismatch"})
    d = decide(m, bad_sig, {}, now=NOW)
    assert "Deployment" not in kinds(d) and d.status["phase"] == "Failed"


def test_failed_training_keeps_the_old_version_and_records_the_failure():
    obs = Observed(train_job=job("Failed"), train_message={"message": "CUDA out of memory"},
                   deployment=deployment(version="old"))
    d = decide(model(), obs, {}, now=NOW)
    dep = next(o for o in d.ensure if o["kind"] == "Deployment")
    assert dep["metadata"]["annotations"]["hardened.dev/version"] == "old"
    assert d.status["phase"] == "Failed" and d.failure == "training"
    assert d.status["lastFailure"]["stage"] == "training" and "CUDA out of memory" in d.status["lastFailure"]["message"]
    assert "keeps serving" in next(c for c in d.status["conditions"] if c["type"] == "Ready")["message"]
    again = decide(model(), obs, d.status, now=LATER)
    assert again.failure is None and again.status["lastFailure"]["time"] == NOW  # counted and stamped once


def test_a_rollout_that_stops_progressing_fails_and_says_the_old_pods_keep_serving():
    """The artifact changed after verification: the new pods' init container refuses it, the Deployment controller
    reports ProgressDeadlineExceeded, and maxUnavailable 0 keeps the previous pods serving."""
    stuck = deployment(ready=1)
    stuck["status"]["updatedReplicas"] = 0
    stuck["status"]["conditions"] = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                      "message": 'ReplicaSet "digits-demo-7d9" has timed out progressing.'}]
    obs = Observed(train_job=job("Complete"), verify_job=job("Complete"), verify_message=VERIFIED, deployment=stuck)
    d = decide(model(serving={"replicas": 1}), obs, {}, now=NOW)
    assert d.status["phase"] == "Failed"
    ready = next(c for c in d.status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "RolloutStuck"
    assert "ProgressDeadlineExceeded" in ready["message"] and "previous version keep serving" in ready["message"]
    assert d.status["lastFailure"]["stage"] == "rollout"
    assert kinds(d).count("Deployment") == 1  # kept as built: no flapping between versions
    # still progressing (no verdict yet): rolling out, not failed
    stuck["status"]["conditions"] = [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}]
    assert decide(model(serving={"replicas": 1}), obs, {}, now=NOW).status["phase"] == "RollingOut"


def test_s3_downloads_are_pinned_to_the_object_versions_the_trainer_uploaded():
    doc = example("eks-s3-irsa")
    doc["metadata"].update(uid="u-1", generation=1)
    m = parse_manifest(doc)
    ids = {"hardened/mnist/mnist-eks/v/model.sig": "sigV1",
           "hardened/mnist/mnist-eks/v/model/model.safetensors": "wV1"}
    trained = Observed(train_job=job("Complete"), train_message={"gatesPassed": True, "versionIds": ids})
    verify = next(o for o in decide(m, trained, {}, now=NOW).ensure if o["kind"] == "Job")
    args = verify["spec"]["template"]["spec"]["containers"][0]["args"]
    assert json.loads(args[args.index("--version-ids") + 1]) == ids
    verified = Observed(train_job=job("Complete"), train_message={"versionIds": ids}, verify_job=job("Complete"),
                        verify_message=VERIFIED)
    d = decide(m, verified, {}, now=NOW)
    dep = next(o for o in d.ensure if o["kind"] == "Deployment")
    init = dep["spec"]["template"]["spec"]["initContainers"][0]["args"]
    assert json.loads(init[init.index("--version-ids") + 1]) == ids
    assert d.status["artifact"]["versionId"] == "sigV1"
    # the trainer's pod is gone later: the Deployment keeps the pinned versions (no spurious rollout)
    dep_now = rolled_out(dep, 3)
    later = Observed(train_job=job("Complete"), verify_job=job("Complete"), verify_message=VERIFIED,
                     deployment=dep_now)
    again = next(o for o in decide(m, later, {}, now=LATER).ensure if o["kind"] == "Deployment")
    assert again == dep


def test_ready_follows_the_rollout_complete_rule_not_the_old_ready_pod():
    """Issue 14: a serving change whose new pod is Pending (no CPU left) kept Ready True, because the old pod was
    ready. Complete means: every replica updated, none of the old ones left, every updated one available."""
    for status in ({"replicas": 2, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1},  # surge Pending
                   {"availableReplicas": 0, "readyReplicas": 1},                                  # not yet available
                   {"observedGeneration": 0}):                                                    # controller behind
        obs, m = serving(status)
        d = decide(m, obs, {}, now=NOW)
        assert d.status["phase"] == "RollingOut" and conditions(d)["Ready"]["status"] == "False", status
    obs, m = serving({})
    assert conditions(decide(m, obs, {}, now=NOW))["Ready"]["status"] == "True"
    # a Deployment that differs from the one this pass wants (patched just now) is not rolled out yet
    obs.deployment["spec"]["template"]["metadata"]["annotations"]["hardened.dev/serving-config"] = "older"
    assert decide(m, obs, {}, now=NOW).status["phase"] == "RollingOut"


def _pod(name, *, ready=False, init=None, scheduled=None, waiting=None):
    status = {"phase": "Pending", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if scheduled:
        status["conditions"].append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                     "message": scheduled})
    if init:
        status["initContainerStatuses"] = [{"name": "verify-model", "restartCount": 4,
                                            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                                            "lastState": {"terminated": {"exitCode": 3, "message": json.dumps(init)}}}]
    if waiting:
        status["containerStatuses"] = [{"name": "model", "state": {"waiting": waiting}}]
    return {"metadata": {"name": name}, "status": status}


def test_a_pod_refusing_its_artifact_fails_the_rollout_with_the_verifiers_reason():
    """Issue 14: the init container refused a tampered artifact and status said 'RollingOut 0/1' forever."""
    obs, m = serving({"replicas": 2, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1})
    obs.serving_pods = [_pod("old", ready=True),
                        _pod("new", init={"verified": False, "reason": "files changed after signing (sha256 "
                                                                       "mismatch): model.safetensors"})]
    d = decide(m, obs, {}, now=NOW)
    serving_ready, ready = conditions(d)["ServingReady"], conditions(d)["Ready"]
    assert d.status["phase"] == "Failed" and serving_ready["reason"] == "ArtifactRefused"
    assert "model.safetensors" in serving_ready["message"] and "pod new" in serving_ready["message"]
    assert "1 ready pod(s) of the previous rollout keep serving" in ready["message"] and ready["status"] == "False"
    assert d.status["lastFailure"]["stage"] == "rollout" and d.status["lastFailure"]["reason"] == "ArtifactRefused"
    assert ("Warning", "ArtifactRefused") in [e[:2] for e in d.events]
    again = decide(m, obs, d.status, now=LATER)
    assert not [e for e in again.events if e[1] == "ArtifactRefused"]  # said once


def test_an_unschedulable_or_unpullable_pod_is_named_in_status():
    obs, m = serving({"replicas": 2, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1})
    obs.serving_pods = [_pod("old", ready=True), _pod("new", scheduled="0/1 nodes are available: 1 Insufficient cpu.")]
    d = decide(m, obs, {}, now=NOW)
    assert d.status["phase"] == "RollingOut"  # it may still fit once something else finishes
    assert conditions(d)["ServingReady"]["reason"] == "Unschedulable"
    assert "Insufficient cpu" in conditions(d)["ServingReady"]["message"]
    assert ("Warning", "Unschedulable") in [e[:2] for e in d.events]
    obs.serving_pods = [_pod("new", waiting={"reason": "ErrImagePull", "message": "pull access denied"})]
    d = decide(m, obs, {}, now=NOW)
    assert conditions(d)["ServingReady"]["reason"] == "ImagePullFailed"


def test_rejected_children_fail_the_model_with_the_api_servers_message():
    from hardened_operator.reconcile import with_rejections

    obs, m = serving({})
    d = decide(m, obs, {}, now=NOW)
    msg = ("Deployment digits-demo: the API server refused it (422 Unprocessable Entity): Deployment.apps "
           '"digits-demo" is invalid: spec.template.spec.containers[0].volumeMounts[3].mountPath: Invalid value: '
           '"/var/run/secrets/hardened/trust": must be unique')
    r = with_rejections(d, [msg], {}, now=NOW)
    assert r.status["phase"] == "Failed"
    assert conditions(r)["Ready"]["reason"] == "ChildRejected" and "must be unique" in conditions(r)["Ready"]["message"]
    assert r.status["lastFailure"] == {"stage": "apply", "reason": "ChildRejected", "message": msg, "time": NOW}
    assert r.events[-1] == ("Warning", "ChildRejected", msg)
    again = with_rejections(decide(m, obs, r.status, now=LATER), [msg], r.status, now=LATER)
    assert again.status["lastFailure"]["time"] == NOW and not [e for e in again.events if e[1] == "ChildRejected"]


def test_a_readwriteonce_store_puts_every_pod_that_mounts_it_on_one_node():
    from hardened_operator.reconcile import needs_colocation

    assert needs_colocation({"spec": {"accessModes": ["ReadWriteOnce"]}})
    assert not needs_colocation({"spec": {"accessModes": ["ReadWriteMany"]}}) and not needs_colocation(None)
    m = model(serving={"replicas": 1})
    obs = Observed(train_job=job("Complete"), verify_job=job("Complete"), verify_message=VERIFIED, colocate=True)
    pods = [o["spec"]["template"] for o in decide(m, obs, {}, now=NOW).ensure if o["kind"] == "Deployment"]
    pods += [o["spec"]["template"] for o in decide(m, Observed(colocate=True), {}, now=NOW).ensure
             if o["kind"] == "Job"]
    pods += [o["spec"]["template"] for o in decide(m, Observed(train_job=job("Complete"), colocate=True), {},
                                                   now=NOW).ensure if o["kind"] == "Job"]
    assert len(pods) == 3  # serving, training, verify
    for pod in pods:
        assert pod["metadata"]["labels"]["hardened.dev/store"] == "hardened-models"
        (term,) = pod["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term == {"labelSelector": {"matchLabels": {"hardened.dev/store": "hardened-models"}},
                        "topologyKey": "kubernetes.io/hostname"}


def test_status_metrics_are_rounded_for_display():
    obs, m = serving({})
    obs.verify_message = {**VERIFIED, "metrics": {"epsilon": 7.996902055510751, "robustAccuracy": 0.6377777777777778}}
    assert decide(m, obs, {}, now=NOW).status["metrics"] == {"epsilon": 7.9969, "robustAccuracy": 0.6378}


def test_prerequisites_name_a_missing_tls_secret_client_ca_and_jwks_and_no_key_is_generated_without_api_keys():
    from hardened_operator.reconcile import ensure_prerequisites

    class Kube:
        def __init__(self, objects):
            self.objects, self.created = objects, []

        def get(self, kind, ns, name):
            return self.objects.get((kind, name))

        def create(self, obj):
            self.created.append(obj)

    m = model(serving={"tls": {"secretName": "digits-tls", "clientCASecret": "callers-ca"},
                       "auth": {"apiKeys": False, "jwt": {"jwks": {"kind": "ConfigMap", "name": "idp", "key": "jwks"},
                                                          "issuer": "https://idp", "audience": "digits"}}})
    have = {("Secret", "digits-tls"): {"data": {"tls.crt": "x"}},  # the key is missing
            ("PersistentVolumeClaim", "hardened-models"): {"spec": {"accessModes": ["ReadWriteMany"]}},
            **{("Secret", ref): {"data": {"private.pem": "p", "public.pem": "q"}} for ref in (
                m.spec.signing.private_key_secret.name, m.spec.signing.public_key_secret.name)}}
    kube = Kube(have)
    missing, _ = ensure_prerequisites(kube, m)
    assert missing == ["missing spec.serving.tls.secretName: Secret default/digits-tls with 'tls.crt' and 'tls.key'",
                       "missing spec.serving.tls.clientCASecret: Secret default/callers-ca with 'ca.crt'",
                       "missing spec.serving.auth.jwt.jwks: ConfigMap default/idp with 'jwks'"]
    assert kube.created == []  # auth.apiKeys false: no API key Secret is generated
    have.update({("Secret", "digits-tls"): {"data": {"tls.crt": "x", "tls.key": "y"}},
                 ("Secret", "callers-ca"): {"data": {"ca.crt": "z"}}, ("ConfigMap", "idp"): {"data": {"jwks": "{}"}}})
    assert ensure_prerequisites(kube, m)[0] == []
    # a private Sigstore's trust config (signing.keyless.trustConfig) is a prerequisite too
    doc = example("digits-demo")
    doc["spec"]["signing"] = {"method": "keyless", "keyless": {
        "identity": "t@acme.test", "oidcIssuer": "https://oidc.acme.test",
        "trustConfig": {"kind": "ConfigMap", "name": "private-sigstore", "key": "trust.json"}}}
    doc["spec"]["serving"]["auth"] = to_wire(m.spec.serving.auth)
    assert ensure_prerequisites(kube, parse_manifest(doc))[0] == [
        "missing spec.signing.keyless.trustConfig: ConfigMap default/private-sigstore with 'trust.json'"]


def test_status_shows_the_data_digest_and_trainer_image_of_the_served_version_even_after_its_jobs_are_gone():
    """Issue 18: the verifier's provenance summary goes into status.artifact and, through the Deployment's
    annotation, status.serving; the trainer's termination message and its pod's imageID into status.training."""
    prov = {"dataDigest": "d" * 64, "trainerImage": "ghcr.io/x/trainer@sha256:" + "e" * 64,
            "trainerImageDigest": "sha256:" + "e" * 64}
    m = model(serving={"replicas": 1})
    obs = Observed(train_job=job("Complete"), train_message={"dataDigest": "d" * 64},
                   train_image_id="ghcr.io/x/trainer@sha256:" + "e" * 64, verify_job=job("Complete"),
                   verify_message={**VERIFIED, "provenance": prov})
    d = decide(m, obs, {}, now=NOW)
    assert d.status["training"]["dataDigest"] == "d" * 64
    assert d.status["training"]["imageID"] == "ghcr.io/x/trainer@sha256:" + "e" * 64
    assert {k: d.status["artifact"][k] for k in prov} == prov
    dep = next(o for o in d.ensure if o["kind"] == "Deployment")
    assert json.loads(dep["metadata"]["annotations"]["hardened.dev/provenance"]) == prov
    # the Jobs (and their messages) are gone; a later pass still knows what is served, from the Deployment
    later = decide(m, Observed(deployment=rolled_out(dep)), d.status, now=LATER)
    assert later.status["serving"]["dataDigest"] == "d" * 64
    assert later.status["serving"]["trainerImageDigest"] == "sha256:" + "e" * 64


def test_the_kubelets_record_of_the_training_pod_reaches_the_verify_job_and_stays_in_the_deployment():
    """Issue 27 point 4: the training pod's reference and imageID go to the verify Job; the Deployment's init
    container gets what that verifier checked (its report echoes it), pinned in an annotation, so a later pass
    with the Jobs gone builds the same Deployment (no rollout) and a restarted pod still checks them."""
    m = model(serving={"replicas": 1})
    ran = {"image": m.spec.training.image, "imageID": "ghcr.io/x/trainer@sha256:" + "e" * 64, "node": "node-a"}
    trained = Observed(train_job=job("Complete"), train_image=ran["image"], train_image_id=ran["imageID"],
                       train_node=ran["node"])
    verify_job = next(o for o in decide(m, trained, {}, now=NOW).ensure
                      if o["kind"] == "Job" and o["metadata"]["name"] == objects.names(m).verify)
    args = verify_job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--observed-trainer-image") + 1] == ran["image"]
    assert args[args.index("--observed-trainer-image-id") + 1] == ran["imageID"]
    assert args[args.index("--observed-trainer-node") + 1] == "node-a"
    obs = dataclasses.replace(trained, verify_job=job("Complete"), verify_message={**VERIFIED, "observedTrainer": ran})
    d = decide(m, obs, {}, now=NOW)
    dep = next(o for o in d.ensure if o["kind"] == "Deployment")
    init = dep["spec"]["template"]["spec"]["initContainers"][0]["args"]
    assert init[init.index("--observed-trainer-image-id") + 1] == ran["imageID"]
    later = decide(m, Observed(deployment=rolled_out(dep)), d.status, now=LATER)
    assert next(o for o in later.ensure if o["kind"] == "Deployment") == dep
    # no pod record (the verifier then checks the claim alone): no flag
    bare = decide(m, Observed(train_job=job("Complete")), {}, now=NOW)
    job_args = next(o for o in bare.ensure if o["kind"] == "Job")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--observed-trainer-image" not in job_args


def test_a_platform_key_countersigns_the_released_version_once_and_later_passes_reuse_it():
    """Issue 27 point 4: decide takes the platform key as it takes the clock. The released version's
    Deployment carries an envelope over the verifier's digest and the kubelet's record; a later pass (Jobs
    gone, another time) builds the same Deployment (no rollout); a rotated key signs it again, if the report
    is there to sign; no key: the Deployment as without the feature."""
    from hardened_model import countersign
    from hardened_model.countersign import PlatformKey
    from hardened_model.signing import generate_key_pem

    m = model(serving={"replicas": 1})
    key = PlatformKey.from_pem(generate_key_pem()[0])
    ran = {"image": m.spec.training.image, "imageID": "ghcr.io/x/trainer@sha256:" + "e" * 64}
    obs = Observed(train_job=job("Complete"), verify_job=job("Complete"), verify_message={**VERIFIED,
                                                                                          "observedTrainer": ran})
    d = decide(m, obs, {}, now=NOW, platform_key=key)
    dep = next(o for o in d.ensure if o["kind"] == "Deployment")
    envelope = json.loads(dep["metadata"]["annotations"][objects.COUNTERSIGNATURE_ANNOTATION])
    statement = countersign.verify(envelope, key.public_pem)
    assert countersign.check(statement, digest=DIGEST, namespace=m.metadata.namespace, name=m.metadata.name) == []
    assert statement["predicate"]["observedTrainer"] == ran and statement["predicate"]["time"] == NOW
    assert statement["predicate"]["verification"] == {"verified": True, "gatesPassed": True, "signer": "s"}
    later = decide(m, Observed(deployment=rolled_out(dep)), d.status, now=LATER, platform_key=key)
    assert next(o for o in later.ensure if o["kind"] == "Deployment") == dep
    again = decide(m, dataclasses.replace(obs, deployment=rolled_out(dep)), d.status, now=LATER, platform_key=key)
    assert next(o for o in again.ensure if o["kind"] == "Deployment") == dep  # the report still there: reused
    rotated = PlatformKey.from_pem(generate_key_pem()[0])
    resigned = next(o for o in decide(m, dataclasses.replace(obs, deployment=rolled_out(dep)), d.status,
                                      now=LATER, platform_key=rotated).ensure if o["kind"] == "Deployment")
    countersign.verify(json.loads(resigned["metadata"]["annotations"][objects.COUNTERSIGNATURE_ANNOTATION]),
                       rotated.public_pem)
    plain = next(o for o in decide(m, obs, {}, now=NOW).ensure if o["kind"] == "Deployment")
    assert objects.COUNTERSIGNATURE_ANNOTATION not in plain["metadata"]["annotations"]
    assert "--countersignature" not in plain["spec"]["template"]["spec"]["initContainers"][0]["args"]


def test_the_platform_key_comes_from_the_operators_environment(tmp_path, monkeypatch):
    """HARDENED_PLATFORM_KEY_FILE: unset or empty, off; a missing or wrong file, an error naming both."""
    import pytest

    from hardened_model.signing import generate_key_pem
    from hardened_operator.countersigning import PLATFORM_KEY_ENV, platform_key

    monkeypatch.delenv(PLATFORM_KEY_ENV, raising=False)
    assert platform_key() is None
    monkeypatch.setenv(PLATFORM_KEY_ENV, "")
    assert platform_key() is None
    missing = tmp_path / "absent.pem"
    monkeypatch.setenv(PLATFORM_KEY_ENV, str(missing))
    with pytest.raises(ValueError, match=f"{PLATFORM_KEY_ENV}: cannot read {missing}"):
        platform_key()
    public = tmp_path / "public.pem"
    public.write_text(generate_key_pem()[1])
    monkeypatch.setenv(PLATFORM_KEY_ENV, str(public))
    with pytest.raises(ValueError, match=f"{PLATFORM_KEY_ENV}: {public}: not an unencrypted PEM private key"):
        platform_key()
    private = tmp_path / "private.pem"
    private.write_text(generate_key_pem()[0])
    monkeypatch.setenv(PLATFORM_KEY_ENV, str(private))
    assert platform_key().keyid.startswith("sha256:")


# ------------------------------------------------------------ HardenedModelPolicy (issue 27)
def policy(name="strict", labels=None, **spec):
    from hardened_model.policy import parse_policy

    if labels is not None:
        spec["namespaceSelector"] = {"matchLabels": labels}
    return parse_policy({"apiVersion": "hardened.dev/v1alpha1", "kind": "HardenedModelPolicy",
                         "metadata": {"name": name}, "spec": spec})


STRICT = dict(labels={"tenant": "ml"}, gates={"maxEpsilon": 1, "minRobustAccuracy": 0.5})
REFUSAL = ("HardenedModelPolicy strict: spec.gates.minRobustAccuracy: 0.3 is below the policy's floor 0.5; "
           "HardenedModelPolicy strict: spec.gates.maxEpsilon: 8 is above the policy's ceiling 1")


def test_a_refused_spec_gets_no_job_and_the_serving_deployment_is_left_as_it_is():
    served = rolled_out(deployment(version="old"))
    obs = Observed(deployment=served, policies=[policy(**STRICT)], namespace_labels={"tenant": "ml"})
    d = decide(model(), obs, {}, now=NOW)
    assert d.ensure == []  # no Job, and no serving child rebuilt from the refused spec
    c = conditions(d)
    assert (c["PolicyAllowed"]["status"], c["PolicyAllowed"]["reason"], c["PolicyAllowed"]["message"]) == (
        "False", "PolicyViolation", REFUSAL)
    assert d.status["phase"] == "Failed" and d.failure == "policy"
    assert d.status["lastFailure"] == {"stage": "policy", "reason": "PolicyViolation",
                                       "message": REFUSAL + "; version old keeps serving", "time": NOW}
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("False", "PolicyViolation")
    assert c["TrainingSucceeded"]["reason"] == "NotStarted"
    assert d.status["serving"]["servedDigest"] == DIGEST and c["ServingReady"]["status"] == "True"
    assert d.events == [("Warning", "PolicyViolation", REFUSAL + "; version old keeps serving")]
    again = decide(model(), obs, d.status, now=LATER)
    assert again.status == d.status and again.events == [] and again.failure is None  # said and counted once


def test_a_policy_tightened_while_the_spec_serves_refuses_it_and_a_verified_version_is_not_rolled_out():
    """The spec's own version serves when the policy appears: it keeps serving (Ready False, saying so); a
    version that verified meanwhile is not released while the policy refuses the spec."""
    obs, m = serving({})
    version = obs.deployment["metadata"]["annotations"]["hardened.dev/version"]
    obs.policies, obs.namespace_labels = [policy(**STRICT)], {"tenant": "ml"}
    d = decide(m, obs, {}, now=NOW)
    assert d.ensure == [] and d.status["phase"] == "Failed"
    assert conditions(d)["Ready"]["message"] == REFUSAL + f"; version {version} keeps serving"
    fresh = Observed(train_job=job("Complete"), verify_job=job("Complete"), verify_message=VERIFIED,
                     policies=[policy(**STRICT)], namespace_labels={"tenant": "ml"})
    d = decide(model(serving={"replicas": 1}), fresh, {}, now=NOW)
    assert d.ensure == [] and "serving" not in d.status and d.status["phase"] == "Failed"
    # training already done: no verify Job either
    trained = Observed(train_job=job("Complete"), policies=[policy(**STRICT)], namespace_labels={"tenant": "ml"})
    d = decide(model(), trained, {}, now=NOW)
    assert d.ensure == [] and conditions(d)["SignatureVerified"]["status"] == "Unknown"


def test_the_policy_removed_the_spec_trains():
    obs = Observed(deployment=rolled_out(deployment(version="old")), policies=[policy(**STRICT)],
                   namespace_labels={"tenant": "ml"})
    refused = decide(model(), obs, {}, now=NOW)
    obs.policies = []
    d = decide(model(), obs, refused.status, now=LATER)
    assert kinds(d)[:3] == ["NetworkPolicy", "ConfigMap", "Job"] and d.status["phase"] == "Training"
    assert conditions(d)["PolicyAllowed"]["status"] == "True"
    assert conditions(d)["PolicyAllowed"]["lastTransitionTime"] == LATER
    assert ("Normal", "Training") in [e[:2] for e in d.events]


def test_a_policy_selecting_another_namespace_or_one_the_spec_meets_changes_nothing():
    obs = Observed(train_job=job("Complete"), verify_job=job("Complete"), verify_message=VERIFIED,
                   namespace_labels={"tenant": "ml"})
    plain = decide(model(), obs, {}, now=NOW)
    obs.policies = [policy("web", labels={"tenant": "web"}, gates={"maxEpsilon": 1}),
                    policy("loose", labels={"tenant": "ml"}, gates={"maxEpsilon": 10})]
    d = decide(model(), obs, {}, now=NOW)
    assert d.ensure == plain.ensure and d.events == plain.events
    assert {k: v for k, v in d.status.items() if k != "conditions"} == \
        {k: v for k, v in plain.status.items() if k != "conditions"}
    assert [c for c in d.status["conditions"] if c["type"] != "PolicyAllowed"] == \
        [c for c in plain.status["conditions"] if c["type"] != "PolicyAllowed"]


def test_policy_allowed_names_the_policies_that_select_the_namespace():
    obs = Observed(namespace_labels={"tenant": "ml"})
    assert conditions(decide(model(), obs, {}, now=NOW))["PolicyAllowed"]["message"] == \
        "no HardenedModelPolicy selects namespace default"
    obs.policies = [policy("b-floor", gates={"minCleanAccuracy": 0.5}), policy("a-all")]
    allowed = conditions(decide(model(), obs, {}, now=NOW))["PolicyAllowed"]
    assert (allowed["status"], allowed["reason"]) == ("True", "Allowed")
    assert allowed["message"] == ("the spec meets HardenedModelPolicy a-all, HardenedModelPolicy b-floor, which "
                                  "select namespace default")
    obs.policies = [policy("a-all")]
    assert conditions(decide(model(), obs, {}, now=NOW))["PolicyAllowed"]["message"] == \
        "the spec meets HardenedModelPolicy a-all, which selects namespace default"


class PolicyKube:
    """The reads observe_policies and models_a_policy_concerns make."""

    def __init__(self, policies, namespaces):
        self.policies, self.namespaces, self.reads = policies, namespaces, []

    def get(self, kind, ns, name):
        assert kind == "Namespace" and ns is None
        self.reads.append(name)
        return {"metadata": {"name": name, "labels": self.namespaces[name]}} if name in self.namespaces else None

    def list_cluster(self, kind):
        assert kind == "HardenedModelPolicy"
        return self.policies


def _body(name, **spec):
    return {"apiVersion": "hardened.dev/v1alpha1", "kind": "HardenedModelPolicy",
            "metadata": {"name": name, "uid": "u", "resourceVersion": "7"}, "spec": spec}


def test_a_policy_the_operator_cannot_read_refuses_every_model():
    """Fail closed: a rule this operator does not understand (a newer CRD's field, say) is not one it may skip."""
    from hardened_operator.reconcile import observe_policies

    kube = PolicyKube([_body("ok", gates={"maxEpsilon": 10}), _body("newer", gates={"maxEpsilonn": 1})],
                      {"default": {"tenant": "ml"}})
    obs = Observed()
    observe_policies(kube, model(), obs)
    assert [p.metadata.name for p in obs.policies] == ["ok"] and obs.namespace_labels == {"tenant": "ml"}
    (line,) = obs.unreadable_policies
    assert line.startswith("HardenedModelPolicy newer: spec: cannot be read (") and "maxEpsilonn" in line
    d = decide(model(), obs, {}, now=NOW)
    assert d.ensure == [] and conditions(d)["PolicyAllowed"]["message"] == line


def test_a_policy_event_concerns_the_models_it_selects_or_governed():
    from hardened_operator.policies import models_a_policy_concerns

    kube = PolicyKube([], {"ml": {"tenant": "ml"}, "web": {"tenant": "web"}, "ops": {}})
    models = {"ml": [("a", frozenset()), ("b", frozenset({"other"}))], "web": [("c", frozenset({"strict"}))],
              "ops": [("d", frozenset())]}
    body = _body("strict", namespaceSelector={"matchLabels": {"tenant": "ml"}})
    assert models_a_policy_concerns(kube, body, models) == [("ml", "a"), ("ml", "b"), ("web", "c")]
    kube.reads.clear()
    everywhere = models_a_policy_concerns(kube, _body("strict"), models)  # no selector: every namespace
    assert everywhere == [("ml", "a"), ("ml", "b"), ("ops", "d"), ("web", "c")] and kube.reads == []
    assert len(models_a_policy_concerns(kube, _body("strict", gates={"bogus": 1}), models)) == 4  # unreadable


def test_the_verify_job_and_the_init_container_run_the_configured_verifier():
    m = model(serving={"replicas": 1, "image": "registry.tenant.test/server:evil"})
    trained = Observed(train_job=job("Complete"))
    (verify,) = [o for o in decide(m, trained, {}, now=NOW, verifier_image="platform.test/verifier@sha256:"
                                   + "c" * 64).ensure if o["kind"] == "Job"]
    assert verify["spec"]["template"]["spec"]["containers"][0]["image"] == "platform.test/verifier@sha256:" + "c" * 64
    obs = Observed(train_job=job("Complete"), verify_job=job("Complete"), verify_message=VERIFIED)
    (dep,) = [o for o in decide(m, obs, {}, now=NOW, verifier_image="platform.test/verifier:1").ensure
              if o["kind"] == "Deployment"]
    pod = dep["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["image"] == "platform.test/verifier:1"
    assert {c["image"] for c in pod["containers"]} == {"registry.tenant.test/server:evil"}


def test_the_verifier_image_comes_from_the_operators_environment(monkeypatch):
    import pytest

    from hardened_operator.manifests.objects import DEFAULT_VERIFIER_IMAGE
    from hardened_operator.reconcile import verifier_image

    monkeypatch.delenv("HARDENED_VERIFIER_IMAGE", raising=False)
    assert verifier_image() == DEFAULT_VERIFIER_IMAGE == "ghcr.io/hardened-model/server:0.1.0"
    monkeypatch.setenv("HARDENED_VERIFIER_IMAGE", "platform.test/verifier@sha256:" + "c" * 64)
    assert verifier_image() == "platform.test/verifier@sha256:" + "c" * 64
    monkeypatch.setenv("HARDENED_VERIFIER_IMAGE", "Not An Image")
    with pytest.raises(ValueError, match="HARDENED_VERIFIER_IMAGE: Invalid value: 'Not An Image'"):
        verifier_image()


def _verify_job_of(m, done):
    """The verify Job objects.py builds for ``m`` (its --gates are the spec's gates then), finished."""
    return {**jobs.build_verify_job(m), "status": job(done)["status"]}


def test_a_verdict_reached_with_older_gates_is_judged_again_with_the_spec_gates_of_this_pass():
    """The version does not cover spec.gates, so the verify Job is not run again when they change: the verdict
    its --gates gave must not roll out a model the current gates refuse (issue 27: a tenant loosened a gate
    below a policy's floor while the Job ran, then raised it again), nor hold back one they accept."""
    loose = model(gates={"minRobustAccuracy": 0.3}, serving={"replicas": 1})
    strict = model(gates={"minRobustAccuracy": 0.5}, serving={"replicas": 1})
    metrics = {"cleanAccuracy": 0.95, "robustAccuracy": 0.31, "epsilon": 7.9, "membershipAUC": 0.52}
    passed = {**VERIFIED, "metrics": metrics, "gates": ["minRobustAccuracy: 0.3100 (passed, threshold 0.3)"]}

    # verified with the loose gates; the spec now asks 0.5: judged again, refused, nothing rolls out
    d = decide(strict, Observed(train_job=job("Complete"), verify_job=_verify_job_of(loose, "Complete"),
                                verify_message=passed), {}, now=NOW)
    assert not [o for o in d.ensure if o["kind"] == "Deployment"]
    gates = next(c for c in d.status["conditions"] if c["type"] == "GatesPassed")
    assert gates["status"] == "False" and "minRobustAccuracy: 0.3100 (FAILED, threshold 0.5)" in gates["message"]

    # the same verdict with the gates it was reached with: rolls out as before
    d = decide(loose, Observed(train_job=job("Complete"), verify_job=_verify_job_of(loose, "Complete"),
                               verify_message=passed), {}, now=NOW)
    assert [o for o in d.ensure if o["kind"] == "Deployment"]

    # refused by the strict gates (the Job failed, exit 3); the spec loosened to 0.3: judged again, released
    failed = {**passed, "gatesPassed": False,
              "reason": "signature verified; gates failed: minRobustAccuracy: 0.3100 (FAILED, threshold 0.5)"}
    d = decide(loose, Observed(train_job=job("Complete"), verify_job=_verify_job_of(strict, "Failed"),
                               verify_message=failed), {}, now=NOW)
    dep = [o for o in d.ensure if o["kind"] == "Deployment"]
    assert dep and dep[0]["metadata"]["annotations"]["hardened.dev/digest"] == DIGEST
    gates = next(c for c in d.status["conditions"] if c["type"] == "GatesPassed")
    assert gates["status"] == "True"


def test_under_a_key_policy_every_verifier_trusts_the_policys_keys_and_mounts_no_key_secret():
    """trust.publicKeys (issue 27 point 3): the verify Job, the init container and the model server take the
    policy's keys inline, never spec.signing.publicKeySecret (the tenant's Secret, which a tenant who replaces
    the artifact can replace too); the keys of each pass are rendered, so a rotation reaches the pods."""
    from hardened_model.signing import generate_key_pem

    pems = [generate_key_pem()[1] for _ in range(2)]
    obs = Observed(train_job=job("Complete"), policies=[policy(trust={"publicKeys": pems})])
    verify_job = next(o for o in decide(model(), obs, {}, now=NOW).ensure if o["kind"] == "Job")
    obs.verify_job, obs.verify_message = job("Complete"), VERIFIED
    dep = next(o for o in decide(model(), obs, {}, now=NOW).ensure if o["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    verifiers = [verify_job["spec"]["template"]["spec"]["containers"][0], pod["initContainers"][0],
                 pod["containers"][0]]
    for c in verifiers:
        args = c["args"]
        assert "--public-key" not in args, c["name"]
        keys = [args[i + 1] for i, a in enumerate(args) if a == "--public-key-pem"]
        assert sorted(keys) == sorted(pems), c["name"]
        assert "trust" not in {m["name"] for m in c["volumeMounts"]}, c["name"]
    assert "trust" not in {v["name"] for v in pod["volumes"]}
    # without the policy: the model's own public key Secret, as before
    obs.policies = []
    plain = next(o for o in decide(model(), obs, {}, now=NOW).ensure if o["kind"] == "Deployment")
    assert "--public-key" in plain["spec"]["template"]["spec"]["initContainers"][0]["args"]


def test_require_countersignature_refuses_a_model_while_the_operator_has_no_platform_key():
    from hardened_model.countersign import PlatformKey
    from hardened_model.signing import generate_key_pem

    obs = Observed(policies=[policy(trust={"requireCountersignature": True})])
    d = decide(model(), obs, {}, now=NOW)
    assert d.ensure == [] and d.failure == "policy"
    assert conditions(d)["PolicyAllowed"]["message"] == (
        "HardenedModelPolicy strict: trust.requireCountersignature: the operator has no platform signing key "
        "(chart value platformSigning.secretName), so no version could be countersigned")
    with_key = decide(model(), obs, {}, now=NOW, platform_key=PlatformKey.from_pem(generate_key_pem()[0]))
    assert kinds(with_key) == ["NetworkPolicy", "ConfigMap", "Job"]
    assert conditions(with_key)["PolicyAllowed"]["status"] == "True"


def test_a_run_over_several_pods_gets_its_headless_service_before_the_job():
    doc = example("digits-distributed")
    doc["metadata"].update(uid="u-1", generation=1)
    d = decide(parse_manifest(doc), Observed(), {}, now=NOW)
    assert kinds(d) == ["NetworkPolicy", "ConfigMap", "NetworkPolicy", "Service", "Job"]
    service, job_ = d.ensure[3], d.ensure[4]
    assert job_["spec"]["template"]["spec"]["subdomain"] == service["metadata"]["name"]


def test_a_verified_version_is_recorded_and_a_record_is_never_countersigned():
    """Issue 29 point 1: the reports go into the version's record once verification reported; a report read
    back from a record (its pods gone) releases and reports as the pods' did, but the platform signs only what
    its verifier said in this pass: an edited record must not become a countersigned version, nor roll out
    without one."""
    from hardened_model.countersign import PlatformKey
    from hardened_model.signing import generate_key_pem
    from hardened_operator import records

    m = model(serving={"replicas": 1})
    n = objects.names(m)
    obs = Observed(train_job=job("Complete"), train_message={"gatesPassed": True}, verify_job=job("Complete"),
                   verify_message=VERIFIED, train_image=m.spec.training.image, train_image_id="x@sha256:" + "e" * 64)
    d = decide(m, obs, {}, now=NOW)
    [record] = [o for o in d.ensure if o["kind"] == "ConfigMap" and o["metadata"]["name"] == n.record]
    training, verification = records.read(record, n.version)
    assert verification == VERIFIED and training["report"] == {"gatesPassed": True}
    assert training["observedTrainer"] == {"image": m.spec.training.image, "imageID": "x@sha256:" + "e" * 64}
    assert records.read(record, "another-version") == (None, None)

    gone = Observed(train_job=job("Complete"), verify_job=job("Complete"))  # every Job pod gone
    records.restore(gone, training, verification)
    assert gone.verify_from_record and gone.train_image == m.spec.training.image
    again = decide(m, gone, {}, now=NOW)
    assert again.status["conditions"] == d.status["conditions"]
    key = PlatformKey.from_pem(generate_key_pem()[0])
    fresh = decide(m, obs, {}, now=NOW, platform_key=key)
    restored = decide(m, gone, {}, now=NOW, platform_key=key)
    init = [o for o in fresh.ensure if o["kind"] == "Deployment"][0]["spec"]["template"]["spec"]["initContainers"][0]
    assert "--countersignature" in init["args"]
    # nor, with a platform key, rolled out uncountersigned: without the envelope its record keeps
    # (versions.released_target) nothing replaces what serves (here: nothing yet)
    assert not [o for o in restored.ensure if o["kind"] == "Deployment"]


def test_status_history_records_each_version_that_served():
    obs, m = serving({})
    d = decide(m, obs, {}, now=NOW)
    version = obs.deployment["metadata"]["annotations"]["hardened.dev/version"]
    assert d.status["history"] == [{"version": version, "digest": DIGEST, "servedFrom": NOW,
                                    "metrics": {"epsilon": 7.9}}]
    again = decide(m, obs, d.status, now=LATER)
    assert again.status["history"] == d.status["history"]  # steady state: nothing written


def test_an_s3_store_without_versioning_is_a_false_artifact_pinned_condition_not_silence():
    """Issue 29 point 3: the trainer gets no S3 versionId from an unversioned bucket; status says so."""
    doc = example("eks-s3-irsa")
    doc["metadata"].update(uid="u-1", generation=1)
    m = parse_manifest(doc)
    unversioned = Observed(train_job=job("Complete"), train_message={"versionIds": {"m/v/model.sig": None}})
    c = conditions(decide(m, unversioned, {}, now=NOW))["ArtifactPinned"]
    assert (c["status"], c["reason"]) == ("False", "BucketUnversioned") and "turn on bucket versioning" in c["message"]
    versioned = Observed(train_job=job("Complete"), train_message={"versionIds": {"m/v/model.sig": "3sL4kqtJ"}})
    c = conditions(decide(m, versioned, {}, now=NOW))["ArtifactPinned"]
    assert (c["status"], c["reason"]) == ("True", "VersionIdsPinned")
    assert conditions(decide(m, Observed(), {}, now=NOW))["ArtifactPinned"]["status"] == "Unknown"
    assert "ArtifactPinned" not in conditions(decide(model(), Observed(), {}, now=NOW))  # a pvc:// store
