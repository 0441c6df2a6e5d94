"""decide(): the pure heart of the operator, without a cluster."""
import json

from hardened_operator.reconcile import Observed, decide
from hardened_operator.spec import parse_manifest
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
            "status": {"observedGeneration": 2, "readyReplicas": ready, "updatedReplicas": ready}}


VERIFIED = {"verified": True, "digest": DIGEST, "signer": "s", "gatesPassed": True, "metrics": {"epsilon": 7.9}}


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
    obs.deployment = {**dep, "metadata": {**dep["metadata"], "generation": 1},
                      "status": {"observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1}}
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
    ids = {"hardened/fraud-mnist/fraud-mnist-eks/v/model.sig": "sigV1",
           "hardened/fraud-mnist/fraud-mnist-eks/v/model/model.safetensors": "wV1"}
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
    dep_now = {**dep, "status": {"observedGeneration": 1, "readyReplicas": 3, "updatedReplicas": 3}}
    dep_now["metadata"] = {**dep["metadata"], "generation": 1}
    later = Observed(train_job=job("Complete"), verify_job=job("Complete"), verify_message=VERIFIED,
                     deployment=dep_now)
    again = next(o for o in decide(m, later, {}, now=LATER).ensure if o["kind"] == "Deployment")
    assert again == dep
