"""Rollback without retraining (issue 29 point 3): spec.serving.version pins a version that served before; its
digest comes from status.history, its metrics from its record, judged against the gates of this pass."""
import json

import pytest

from hardened_model.contracts import training_version
from hardened_model.countersign import PlatformKey
from hardened_model.signing import generate_key_pem
from hardened_model.spec import parse_manifest
from hardened_operator import records
from hardened_operator.cli import choose_rollback
from hardened_operator.manifests import jobs, objects
from hardened_operator.reconcile import Observed, decide
from helpers import example

NOW, LATER = "2026-12-04T05:00:00Z", "2026-12-04T06:00:00Z"
D1, D2 = "11" * 32, "22" * 32
V1 = "aaaaaaaaaaaa"
METRICS = {"cleanAccuracy": 0.95, "robustAccuracy": 0.6, "epsilon": 7.5, "membershipAUC": 0.52}


def model(version=None, **signing):
    doc = example("digits-demo")
    doc["metadata"].update(uid="u-1", generation=3)
    doc["spec"]["serving"] = {**doc["spec"]["serving"], "replicas": 1, **({"version": version} if version else {})}
    doc["spec"]["signing"] = {**doc["spec"]["signing"], **signing}
    doc["spec"]["signing"] = {k: v for k, v in doc["spec"]["signing"].items() if v is not None}
    return parse_manifest(doc)


V2 = training_version(model().spec)


def job(done="Complete"):
    return {"metadata": {"name": "j"}, "status": {"conditions": [{"type": done, "status": "True"}]}}


def rolled_out(dep: dict) -> dict:
    return {**dep, "metadata": {**dep["metadata"], "generation": 1},
            "status": {"observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1, "replicas": 1,
                       "availableReplicas": 1}}


def record(version=V1, digest=D1, metrics=METRICS, countersignature=None, **report) -> dict:
    data = {records.TRAINING_KEY: json.dumps({"report": report, "observedTrainer": None}),
            records.VERIFICATION_KEY: json.dumps({"verified": True, "digest": digest, "gatesPassed": True,
                                                  "metrics": metrics})}
    if countersignature:
        data[records.COUNTERSIGNATURE_KEY] = json.dumps(countersignature)
    return {"metadata": {"name": f"digits-demo-version-{version}", "annotations": {"hardened.dev/version": version}},
            "data": data}


HISTORY = [{"version": V2, "digest": D2, "servedFrom": NOW},
           {"version": V1, "digest": D1, "servedFrom": "2026-12-03T05:00:00Z", "servedTo": NOW,
            "stopped": f"replaced by version {V2}"}]


def serving_v2(m, **obs) -> Observed:
    """v2 verified and serving; v1 served before it."""
    o = Observed(train_job=job(), verify_job=job(), verify_message={"verified": True, "digest": D2,
                                                                    "gatesPassed": True, "metrics": METRICS}, **obs)
    dep = next(x for x in decide(model(), o, {}, now=NOW).ensure if x["kind"] == "Deployment")
    o.deployment = rolled_out(dep)
    return o


def conditions(d) -> dict:
    return {c["type"]: c for c in d.status["conditions"]}


def test_a_pinned_earlier_version_rolls_out_without_a_job_and_serves():
    m = model(V1)
    obs = serving_v2(m, pinned_record=records.read(record(), V1))
    d = decide(m, obs, {"history": HISTORY}, now=LATER)
    assert not [o for o in d.ensure if o["kind"] == "Job"]
    [dep] = [o for o in d.ensure if o["kind"] == "Deployment"]
    assert dep["metadata"]["annotations"]["hardened.dev/digest"] == D1
    assert dep["metadata"]["annotations"]["hardened.dev/version"] == V1
    assert f"--expect-digest {D1}" in " ".join(dep["spec"]["template"]["spec"]["initContainers"][0]["args"])
    assert d.status["phase"] == "RollingOut"
    # once rolled out: Serving, Ready, history says what happened, metrics are v1's
    obs.deployment = rolled_out(dep)
    d = decide(m, obs, {"history": HISTORY}, now=LATER)
    assert d.status["phase"] == "Serving" and conditions(d)["Ready"]["status"] == "True"
    head, previous = d.status["history"][:2]
    assert (head["version"], head["digest"], head["servedFrom"]) == (V1, D1, LATER)
    assert previous["version"] == V2 and previous["stopped"] == f"rolled back to version {V1} (spec.serving.version)"
    assert d.status["metrics"]["robustAccuracy"] == 0.6
    assert d.status["serving"]["servedDigest"] == D1


def test_the_pin_removed_the_spec_version_serves_again_without_training():
    m = model()
    obs = serving_v2(m)
    v1_dep = next(o for o in decide(model(V1), serving_v2(m, pinned_record=records.read(record(), V1)),
                                    {"history": HISTORY}, now=LATER).ensure if o["kind"] == "Deployment")
    obs.deployment = rolled_out(v1_dep)
    d = decide(m, obs, {"history": HISTORY}, now=LATER)
    assert not [o for o in d.ensure if o["kind"] == "Job"]
    [dep] = [o for o in d.ensure if o["kind"] == "Deployment"]
    assert dep["metadata"]["annotations"]["hardened.dev/digest"] == D2


@pytest.mark.parametrize("case, pinned_record, history, words", [
    ("never served", record(), [HISTORY[0]], "this model never served that version"),
    ("no record", (None, None), HISTORY, "no record of that version's verification"),
    ("record changed", record(digest="33" * 32), HISTORY, "the record was changed"),
    ("gate fails now", record(metrics={**METRICS, "robustAccuracy": 0.1}), HISTORY,
     "fails the spec's gates now: minRobustAccuracy"),
])
def test_a_pin_that_cannot_serve_is_refused_and_the_serving_version_keeps_serving(case, pinned_record, history,
                                                                                  words):
    m = model(V1)
    obs = serving_v2(m, pinned_record=pinned_record if isinstance(pinned_record, tuple)
                     else records.read(pinned_record, V1))
    d = decide(m, obs, {"history": history}, now=LATER)
    [dep] = [o for o in d.ensure if o["kind"] == "Deployment"]
    assert dep["metadata"]["annotations"]["hardened.dev/digest"] == D2, case
    ready = conditions(d)["Ready"]
    assert d.status["phase"] == "Failed" and ready["status"] == "False" and ready["reason"] == "RollbackRefused"
    assert ready["message"].startswith(f'spec.serving.version: "{V1}": ') and words in ready["message"], ready
    assert ready["message"].endswith(f"version {V2} keeps serving")
    assert d.status["lastFailure"]["stage"] == "rollback"
    assert ("Warning", "Failed", ready["message"]) in d.events


def test_a_per_run_key_comes_from_the_history_never_from_the_record():
    m = model(V1, method="ephemeral", privateKeySecret=None, publicKeySecret=None)
    (_, genuine), (_, forged) = generate_key_pem(), generate_key_pem()
    history = [HISTORY[0], {**HISTORY[1], "runKey": genuine}]
    obs = Observed(train_job=job(), verify_job=job(), pinned_record=records.read(record(signingKey=forged), V1))
    [dep] = [o for o in decide(m, obs, {"history": history}, now=LATER).ensure if o["kind"] == "Deployment"]
    args = dep["spec"]["template"]["spec"]["initContainers"][0]["args"]
    assert args[args.index("--public-key-pem") + 1] == genuine and forged not in args
    assert dep["metadata"]["annotations"]["hardened.dev/run-key"] == genuine
    d = decide(m, obs, {"history": [HISTORY[0], HISTORY[1]]}, now=LATER)
    assert "keeps no per-run key" in conditions(d)["Ready"]["message"]


def test_under_a_platform_key_the_record_must_keep_a_countersignature_for_that_digest():
    from hardened_model import countersign

    key = PlatformKey.from_pem(generate_key_pem()[0])
    m = model(V1)

    def envelope(digest):
        return key.sign(countersign.build_statement(digest=digest, namespace=m.metadata.namespace or "",
                                                    name=m.metadata.name, version=V1, verdict={"verified": True},
                                                    observed_trainer=None, time=NOW))

    for kept, served in ((envelope(D1), D1), (None, D2), (envelope("44" * 32), D2)):
        obs = serving_v2(m, pinned_record=records.read(record(), V1), pinned_countersignature=kept)
        d = decide(m, obs, {"history": HISTORY}, now=LATER, platform_key=key)
        [dep] = [o for o in d.ensure if o["kind"] == "Deployment"]
        assert dep["metadata"]["annotations"]["hardened.dev/digest"] == served
        if served == D1:
            assert json.loads(dep["metadata"]["annotations"][objects.COUNTERSIGNATURE_ANNOTATION]) == kept
        else:
            assert "keeps no platform countersignature" in conditions(d)["Ready"]["message"]


def test_the_record_keeps_the_countersignature_the_version_served_with():
    key = PlatformKey.from_pem(generate_key_pem()[0])
    m = model()
    obs = Observed(train_job=job(), verify_job=job(), train_message={"gatesPassed": True},
                   verify_message={"verified": True, "digest": D2, "gatesPassed": True, "metrics": METRICS})
    d = decide(m, obs, {}, now=NOW, platform_key=key)
    [dep] = [o for o in d.ensure if o["kind"] == "Deployment"]
    [cm] = [o for o in d.ensure if o["kind"] == "ConfigMap" and o["metadata"]["name"] == objects.names(m).record]
    assert records.kept_countersignature(cm, V2) == json.loads(
        dep["metadata"]["annotations"][objects.COUNTERSIGNATURE_ANNOTATION])


def test_rollback_chooses_the_newest_earlier_version_or_says_why_not():
    status = {"history": HISTORY}
    assert choose_rollback("m", status, to=None) == V1
    assert choose_rollback("m", status, to=V2) == V2
    with pytest.raises(ValueError, match="never served that version"):
        choose_rollback("m", status, to="bbbbbbbbbbbb")
    with pytest.raises(ValueError, match=f"only {V2} served"):
        choose_rollback("m", {"history": [HISTORY[0]]}, to=None)
    with pytest.raises(ValueError, match="nothing served yet"):
        choose_rollback("m", {}, to=None)
    # after a rollback the pinned version serves: the next rollback goes to the other one
    assert choose_rollback("m", {"history": [{"version": V1, "digest": D1, "servedFrom": LATER}, *HISTORY]},
                           to=None) == V2


def test_serving_version_must_be_a_version_name():
    from hardened_model.spec import SpecError

    with pytest.raises(SpecError, match="spec.serving.version"):
        model("v1")


def regression_world(on_gate_regression, v1_robust=0.75):
    """v2 serves (robust accuracy 0.6), v1 served before it (v1_robust); the spec's gate is raised to 0.7."""
    doc = example("digits-demo")
    doc["metadata"].update(uid="u-1", generation=4)
    doc["spec"]["serving"] = {**doc["spec"]["serving"], "replicas": 1, "onGateRegression": on_gate_regression}
    doc["spec"]["gates"] = {**doc["spec"]["gates"], "minRobustAccuracy": 0.7}
    strict = parse_manifest(doc)
    obs = serving_v2(strict)
    # the verify Job as the operator made it, with the gates of then (reconcile.judged reads them back)
    obs.verify_job = {**jobs.build_verify_job(model()), "status": job()["status"]}
    obs.version_records = {V1: records.read(record(metrics={**METRICS, "robustAccuracy": v1_robust}), V1),
                           V2: (None, None)}
    return strict, obs


def test_a_gate_raised_above_the_serving_version_rolls_back_to_the_newest_earlier_version_that_passes():
    strict, obs = regression_world("Rollback")
    d = decide(strict, obs, {"history": HISTORY}, now=LATER)
    [dep] = [o for o in d.ensure if o["kind"] == "Deployment"]
    assert dep["metadata"]["annotations"]["hardened.dev/digest"] == D1
    gates = conditions(d)["GatesPassed"]
    assert gates["status"] == "False" and "minRobustAccuracy: 0.6000 (FAILED, threshold 0.7)" in gates["message"]
    assert d.status["phase"] == "Failed" and f"version {V1} keeps serving" in conditions(d)["Ready"]["message"]
    obs.deployment = rolled_out(dep)
    d = decide(strict, obs, {"history": HISTORY}, now=LATER)
    assert d.status["history"][1]["stopped"].startswith(f"rolled back to version {V1}: version {V2} fails the gates")
    assert [o for o in d.ensure if o["kind"] == "Deployment"][0] == dep  # stays there: v1 passes
    # the gate lowered again: v2, verified, rolls out again without training
    relaxed = model()
    d = decide(relaxed, obs, {"history": d.status["history"]}, now=LATER)
    assert not [o for o in d.ensure if o["kind"] == "Job"]
    assert [o for o in d.ensure if o["kind"] == "Deployment"][0]["metadata"]["annotations"][
        "hardened.dev/digest"] == D2


@pytest.mark.parametrize("mode, v1_robust", [("Warn", 0.75), ("Rollback", 0.65)])
def test_warn_or_no_earlier_version_passing_keeps_the_serving_version_and_says_why(mode, v1_robust):
    strict, obs = regression_world(mode, v1_robust)
    d = decide(strict, obs, {"history": HISTORY}, now=LATER)
    [dep] = [o for o in d.ensure if o["kind"] == "Deployment"]
    assert dep["metadata"]["annotations"]["hardened.dev/digest"] == D2
    ready = conditions(d)["Ready"]
    assert ready["status"] == "False" and "minRobustAccuracy: 0.6000 (FAILED, threshold 0.7)" in ready["message"]
    assert ready["message"].endswith(f"version {V2} keeps serving")


def test_a_pinned_version_is_judged_again_on_its_signed_metrics_and_a_record_whose_figures_changed_is_refused():
    """The record's figures are not signed: the init container of a version served again judges the signed
    metrics.json against the gates (--gates), and a record whose metrics differ from what status.history kept
    when the version served is refused."""
    m = model(V1)
    history = [HISTORY[0], {**HISTORY[1], "metrics": {**METRICS}}]
    obs = serving_v2(m, pinned_record=records.read(record(), V1))
    [dep] = [o for o in decide(m, obs, {"history": history}, now=LATER).ensure if o["kind"] == "Deployment"]
    init = dep["spec"]["template"]["spec"]["initContainers"][0]["args"]
    assert json.loads(init[init.index("--gates") + 1]) == {k: v for k, v in m.spec.gates.model_dump(
        by_alias=True).items() if v is not None}
    obs.deployment = rolled_out(dep)  # a later pass keeps the flag: no second rollout
    assert [o for o in decide(m, obs, {"history": history}, now=LATER).ensure if o["kind"] == "Deployment"] == [dep]
    edited = serving_v2(m, pinned_record=records.read(record(metrics={**METRICS, "robustAccuracy": 0.99}), V1))
    d = decide(m, edited, {"history": history}, now=LATER)
    assert "metrics differ from those status.history kept" in conditions(d)["Ready"]["message"]


def test_a_release_read_back_from_a_record_rolls_out_only_with_the_envelope_that_record_keeps():
    """The platform signs only what its verifier said in this pass: a version released from its record (the
    Jobs' pods gone) whose record keeps no countersignature for it does not replace the serving one."""
    from hardened_model import countersign

    key = PlatformKey.from_pem(generate_key_pem()[0])
    m = model()
    v1_dep = next(o for o in decide(model(V1), serving_v2(m, pinned_record=records.read(record(), V1)),
                                    {"history": HISTORY}, now=LATER).ensure if o["kind"] == "Deployment")
    gone = Observed(train_job=job(), verify_job=job(), verify_from_record=True, deployment=rolled_out(v1_dep),
                    verify_message={"verified": True, "digest": D2, "gatesPassed": True, "metrics": METRICS})
    [dep] = [o for o in decide(m, gone, {"history": HISTORY}, now=LATER, platform_key=key).ensure
             if o["kind"] == "Deployment"]
    assert dep["metadata"]["annotations"]["hardened.dev/digest"] == D1  # kept serving
    gone.own_countersignature = key.sign(countersign.build_statement(
        digest=D2, namespace=m.metadata.namespace or "", name=m.metadata.name, version=V2,
        verdict={"verified": True}, observed_trainer=None, time=NOW))
    [dep] = [o for o in decide(m, gone, {"history": HISTORY}, now=LATER, platform_key=key).ensure
             if o["kind"] == "Deployment"]
    assert dep["metadata"]["annotations"]["hardened.dev/digest"] == D2


def test_a_second_rollback_goes_further_back_and_the_own_version_clears_the_pin():
    after = {"history": [{"version": V1, "digest": D1, "servedFrom": LATER},
                         {**HISTORY[0], "servedTo": LATER, "stopped": f"rolled back to version {V1} (x)"},
                         HISTORY[1], {"version": "cccccccccccc", "digest": "cc" * 32, "servedFrom": "2026-12-01T00:00:00Z",
                                      "servedTo": "2026-12-03T05:00:00Z"}]}
    assert choose_rollback("m", after, to=None, own=V2) == "cccccccccccc"
    assert choose_rollback("m", {"history": HISTORY}, to=None, own=V1) is None
    assert choose_rollback("m", {"history": HISTORY}, to=V2, own=V2) is None
