"""status.py: each condition, the phase and the status fields from a small observed state, without decide()."""
from hardened_operator.status import (Cond, JobState, ServingTarget, artifact_status, current_phase, job_state,
                                      governing_policies, last_failure, metrics_status, policy_condition,
                                      ready_condition, serving_condition, serving_status, training_condition,
                                      verification_conditions)

DIGEST = "ab" * 32
NOW, LATER = "2026-11-22T05:00:00Z", "2026-11-22T06:00:00Z"
RUNNING = JobState("running", "Running", "running")
SUCCEEDED = JobState("succeeded", "Completed", "completed")
FAILED = JobState("failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
PENDING = JobState("pending", "Pending", "waiting for training")
VERIFIED = {"verified": True, "digest": DIGEST, "signer": "ci@acme.test", "gatesPassed": True,
            "gates": ["minCleanAccuracy 0.95 >= 0.9", "maxEpsilon 7.9 <= 8"]}


def test_job_state_counts_the_early_terminal_conditions():
    """The Job controller may set SuccessCriteriaMet / FailureTarget before the terminal Complete / Failed."""
    assert job_state({"status": {"conditions": [{"type": "SuccessCriteriaMet", "status": "True"}]}}).state == \
        "succeeded"
    failing = job_state({"status": {"conditions": [{"type": "FailureTarget", "status": "True",
                                                    "reason": "DeadlineExceeded", "message": "too slow"}]}})
    assert failing == JobState("failed", "DeadlineExceeded", "too slow")
    assert job_state({"status": {"conditions": [{"type": "Failed", "status": "False"}]}}).state == "running"


class TestTrainingCondition:
    def test_running_and_succeeded(self):
        assert training_condition(RUNNING, job_name="m-train-v1", report=None) == (
            "Unknown", "Training", "training Job m-train-v1 is running")
        assert training_condition(SUCCEEDED, job_name="m-train-v1", report=None) == (
            "True", "Succeeded", "training Job m-train-v1 completed")

    def test_a_failure_quotes_the_trainers_message_over_the_jobs(self):
        cond = training_condition(FAILED, job_name="m-train-v1", report={"message": "CUDA out of memory"})
        assert cond == ("False", "TrainingFailed", "training Job m-train-v1 failed (BackoffLimitExceeded): "
                                                   "CUDA out of memory")
        assert training_condition(FAILED, job_name="j", report=None).message.endswith("specified backoff limit")

    def test_a_distributed_run_names_each_failed_rank_first_failure_first(self):
        """Issue 28: the Job says which pod matched its FailJob rule; the ranks say why, the first the cause."""
        import json

        from hardened_operator.kube import failed_ranks

        def pod(index, finished, code, message):
            return {"metadata": {"name": f"m-train-v1-{index}-x", "annotations": {
                        "batch.kubernetes.io/job-completion-index": str(index)}},
                    "status": {"containerStatuses": [{"name": "trainer", "state": {"terminated": {
                        "exitCode": code, "finishedAt": finished, "message": message}}}]}}

        pods = [pod(0, "2026-12-03T10:00:09Z", 1, json.dumps({"message": "gloo: connection closed by peer",
                                                               "rank": 0})),
                pod(1, "2026-12-03T10:00:02Z", 137, ""),
                pod(2, "2026-12-03T10:00:05Z", 0, json.dumps({"message": "ok"}))]
        failures = failed_ranks(pods)
        assert [(f["node"], f["exitCode"]) for f in failures] == [(1, 137), (0, 1)]
        job = JobState("failed", "PodFailurePolicy", "Container trainer for pod ns/m-train-v1-1-x failed with exit "
                                                     "code 137 matching FailJob rule at index 0")
        cond = training_condition(job, job_name="m-train-v1", report={"message": "ok"}, failures=failures)
        assert cond == ("False", "TrainingFailed", "training Job m-train-v1 failed (PodFailurePolicy): Container "
                                                   "trainer for pod ns/m-train-v1-1-x failed with exit code 137 "
                                                   "matching FailJob rule at index 0; node 1 (pod m-train-v1-1-x, "
                                                   "exit 137): no message; node 0 rank 0 (pod m-train-v1-0-x, exit "
                                                   "1): gloo: connection closed by peer")

    def test_a_deadline_keeps_the_jobs_own_reason(self):
        cond = training_condition(JobState("failed", "DeadlineExceeded", "active too long"), job_name="j", report={})
        assert cond.reason == "DeadlineExceeded" and cond.message == "training Job j failed (DeadlineExceeded): " \
                                                                     "active too long"


class TestVerificationConditions:
    def test_both_wait_while_the_job_has_not_finished(self):
        for state in (PENDING, RUNNING):
            assert verification_conditions(state, VERIFIED) == (("Unknown", "Pending",
                                                                 "waiting for the verification Job"),) * 2

    def test_verified_with_gates_passed(self):
        signature, gates = verification_conditions(SUCCEEDED, VERIFIED)
        assert signature == ("True", "Verified", f"signed by ci@acme.test; digest {DIGEST}")
        assert gates == ("True", "Passed", "minCleanAccuracy 0.95 >= 0.9; maxEpsilon 7.9 <= 8")
        assert verification_conditions(SUCCEEDED, {**VERIFIED, "gates": []})[1].message == "no gates configured"

    def test_a_failed_job_that_verified_the_signature_failed_a_gate(self):
        signature, gates = verification_conditions(FAILED, {**VERIFIED, "gatesPassed": False,
                                                            "reason": "gates failed: minRobustAccuracy"})
        assert signature.status == "True"
        assert gates == ("False", "GatesFailed", "gates failed: minRobustAccuracy")

    def test_gates_are_not_judged_on_an_unverified_artifact(self):
        signature, gates = verification_conditions(FAILED, {"verified": False, "reason": "Key mismatch",
                                                            "gatesPassed": True})
        assert signature == ("False", "VerificationFailed", "Key mismatch")
        assert gates == ("Unknown", "NotChecked", "signature did not verify")
        # the verifier crashed before it wrote a report: the Job's message
        assert verification_conditions(FAILED, {})[0].message == "verification Job failed: " + FAILED.message


class TestServingCondition:
    TARGET = ServingTarget(DIGEST, "v1")

    def test_nothing_verified_yet(self):
        assert serving_condition(None, complete=False, ready_replicas=0, replicas=2, problems=[]) == (
            "False", "NotDeployed", "no verified version yet")

    def test_complete_names_the_version_and_the_digest_prefix(self):
        assert serving_condition(self.TARGET, complete=True, ready_replicas=2, replicas=2, problems=[]) == (
            "True", "Ready", "2/2 replicas serving version v1 (digest abababababababab)")

    def test_the_worst_pod_problem_names_the_cause_and_the_old_pods_that_keep_serving(self):
        problems = [("ArtifactRefused", "pod new: refused"), ("Unschedulable", "pod other: no cpu")]
        assert serving_condition(self.TARGET, complete=False, ready_replicas=1, replicas=2, problems=problems) == (
            "False", "ArtifactRefused", "1/2 replicas ready; pod new: refused; 1 ready pod(s) of the previous "
                                        "rollout keep serving")
        assert serving_condition(self.TARGET, complete=False, ready_replicas=0, replicas=2,
                                 problems=problems).message == "0/2 replicas ready; pod new: refused"

    def test_rolling_out_without_a_problem(self):
        assert serving_condition(self.TARGET, complete=False, ready_replicas=1, replicas=2, problems=[]) == (
            "False", "RollingOut", "1/2 replicas ready")


def conditions(serving=Cond("False", "RollingOut", "0/1 replicas ready"), **others) -> dict[str, Cond]:
    return {"TrainingSucceeded": others.get("training", Cond("True", "Succeeded", "training Job j completed")),
            "SignatureVerified": others.get("signature", Cond("True", "Verified", "signed by s")),
            "GatesPassed": others.get("gates", Cond("True", "Passed", "all gates passed")),
            "ServingReady": serving}


def phase(conds=None, **kw):
    args = {"training": SUCCEEDED, "verification": SUCCEEDED, "released": True, "complete": False, "stuck": None,
            "deployment": "m", "kept_version": None, **kw}
    return current_phase(conds or conditions(), **args)


class TestCurrentPhase:
    def test_the_stage_in_progress(self):
        training = Cond("Unknown", "Training", "training Job j is running")
        assert phase(conditions(training=training), training=RUNNING, verification=PENDING) == (
            "Training", None, training)
        pending = Cond("Unknown", "Pending", "waiting for the verification Job")
        assert phase(conditions(signature=pending, gates=pending), verification=RUNNING, released=False) == (
            "Verifying", None, pending)
        assert phase()[:2] == ("RollingOut", None)
        serving = Cond("True", "Ready", "1/1 replicas serving version v1 (digest abab)")
        assert phase(conditions(serving), complete=True) == ("Serving", None, serving)

    def test_a_refused_artifact_fails_the_rollout_even_while_the_next_version_trains(self):
        refused = Cond("False", "ArtifactRefused", "1/2 replicas ready; pod new: refused")
        assert phase(conditions(refused), training=RUNNING, verification=PENDING) == ("Failed", "rollout", refused)

    def test_a_stuck_rollout_says_the_previous_pods_keep_serving(self):
        name, stage, why = phase(stuck="ProgressDeadlineExceeded: timed out")
        assert (name, stage, why.reason) == ("Failed", "rollout", "RolloutStuck")
        assert why.message == ("Deployment m did not progress (ProgressDeadlineExceeded: timed out); the pods of "
                               "the previous version keep serving; kubectl describe pods shows why the new ones do "
                               "not start")

    def test_a_failure_says_which_older_version_keeps_serving(self):
        failed = Cond("False", "TrainingFailed", "training Job j failed (BackoffLimitExceeded): OOM")
        name, stage, why = phase(conditions(training=failed), training=FAILED, verification=PENDING,
                                 kept_version="v0")
        assert (name, stage) == ("Failed", "training")
        assert why == ("False", "TrainingFailed", failed.message + "; version v0 keeps serving")

    def test_a_policys_refusal_outranks_every_stage_and_says_what_keeps_serving(self):
        refused = Cond("False", "PolicyViolation", "HardenedModelPolicy strict: spec.signing.mode: \"Warn\"; "
                                                   "the policy requires \"Enforce\"")
        stuck = Cond("False", "ArtifactRefused", "1/2 replicas ready; pod new: refused")
        conds = {**conditions(stuck), "PolicyAllowed": refused}
        assert phase(conds, training=FAILED, stuck="ProgressDeadlineExceeded") == ("Failed", "policy", refused)
        assert phase(conds, kept_version="v0") == (
            "Failed", "policy", ("False", "PolicyViolation", refused.message + "; version v0 keeps serving"))
        allowed = {**conditions(), "PolicyAllowed": Cond("True", "Allowed", "no HardenedModelPolicy selects ...")}
        assert phase(allowed) == phase()

    def test_a_verification_failure_is_explained_by_the_signature_first_then_the_gates(self):
        bad = Cond("False", "VerificationFailed", "Key mismatch")
        not_checked = Cond("Unknown", "NotChecked", "signature did not verify")
        assert phase(conditions(signature=bad, gates=not_checked), verification=FAILED, released=False) == (
            "Failed", "verification", bad)
        gates = Cond("False", "GatesFailed", "gates failed: minRobustAccuracy")
        assert phase(conditions(gates=gates), verification=FAILED, released=False) == ("Failed", "verification",
                                                                                        gates)
        # signing.mode Warn released it past the gate: not a failure, it rolls out
        assert phase(conditions(gates=gates), verification=FAILED, released=True)[:2] == ("RollingOut", None)


class TestReadyCondition:
    SERVING = Cond("True", "Ready", "1/1 replicas serving version v1 (digest abab)")

    def test_ready_only_once_the_specs_version_is_rolled_out(self):
        why = Cond("Unknown", "Training", "training Job j is running")
        assert ready_condition(why, serving=self.SERVING, rolled_out=False, warned=False) == (
            "False", "Training", "training Job j is running")  # an older version serving is not this spec ready
        assert ready_condition(self.SERVING, serving=self.SERVING, rolled_out=True, warned=False) == self.SERVING

    def test_served_past_a_failed_gate_it_says_so(self):
        assert ready_condition(self.SERVING, serving=self.SERVING, rolled_out=True, warned=True) == (
            "True", "ReadyWithWarnings", self.SERVING.message + "; gates failed (signing.mode Warn)")


class TestLastFailure:
    WHY = Cond("False", "TrainingFailed", "OOM")

    def test_a_failure_keeps_the_time_it_first_appeared(self):
        first = last_failure({}, "training", self.WHY, settled=False, now=NOW)
        assert first == {"stage": "training", "reason": "TrainingFailed", "message": "OOM", "time": NOW}
        assert last_failure(first, "training", self.WHY, settled=False, now=LATER)["time"] == NOW
        assert last_failure(first, "verification", self.WHY, settled=False, now=LATER)["time"] == LATER

    def test_it_stays_until_the_specs_version_serves(self):
        first = last_failure({}, "training", self.WHY, settled=False, now=NOW)
        assert last_failure(first, None, self.WHY, settled=False, now=LATER) == first
        assert last_failure(first, None, self.WHY, settled=True, now=LATER) is None
        assert last_failure({}, None, self.WHY, settled=False, now=LATER) is None


class TestStatusFields:
    def test_artifact_says_what_vouches_for_it_once_verified(self):
        ids = {"m/v1/model.sig": "sigV1", "m/v1/model/model.safetensors": "wV1"}
        assert artifact_status("s3://b/m/v1", None, version_ids=ids) == {"uri": "s3://b/m/v1"}
        report = {**VERIFIED, "provenance": {"dataDigest": "d" * 64}}
        assert artifact_status("s3://b/m/v1", report, version_ids=ids) == {
            "uri": "s3://b/m/v1", "digest": DIGEST, "signer": "ci@acme.test", "versionId": "sigV1",
            "dataDigest": "d" * 64}

    def test_metrics_are_rounded_and_absent_before_a_verified_report(self):
        assert metrics_status(None) is None and metrics_status({**VERIFIED, "metrics": {}}) is None
        assert metrics_status({"metrics": {"epsilon": 7.996902055510751, "unknown": 1.0}}) == {"epsilon": 7.9969}

    def test_serving_falls_back_to_the_trainer_image_given_by_tag(self):
        target = ServingTarget(DIGEST, "v1", provenance={"trainerImage": "ghcr.io/x/trainer:1.0"})
        assert serving_status(target, url="http://m.ns.svc", ready_replicas=0) == {
            "url": "http://m.ns.svc", "readyReplicas": 0, "servedDigest": DIGEST,
            "trainerImageDigest": "ghcr.io/x/trainer:1.0"}
        assert serving_status(None, url="http://m.ns.svc", ready_replicas=0) is None


class TestPolicyAllowed:
    def test_every_refusal_line_joined_or_the_policies_that_select_the_namespace(self):
        lines = ["HardenedModelPolicy a: spec.gates.maxEpsilon: not set; the policy requires at most 3",
                 "HardenedModelPolicy b.example: spec.aws.serviceAccountName: \"s3\"; the policy allows none"]
        assert policy_condition(lines, selecting=["a", "b.example"], namespace="ml") == (
            "False", "PolicyViolation", "; ".join(lines))
        assert policy_condition([], selecting=[], namespace="ml") == (
            "True", "Allowed", "no HardenedModelPolicy selects namespace ml")
        assert policy_condition([], selecting=["a"], namespace="ml") == (
            "True", "Allowed", "the spec meets HardenedModelPolicy a, which selects namespace ml")

    def test_the_governing_policies_are_read_back_from_the_condition(self):
        """on_policy re-runs the models a policy governed: the names come back from the condition's message."""
        def status(cond):
            return {"conditions": [{"type": "PolicyAllowed", "status": cond.status, "reason": cond.reason,
                                    "message": cond.message}]}
        lines = ["HardenedModelPolicy a: spec.gates.maxEpsilon: not set; the policy requires at most 3",
                 "HardenedModelPolicy b.example: spec.signing.mode: \"Warn\"; the policy requires \"Enforce\"",
                 "HardenedModelPolicy a: spec.training.image: \"x\" matches none of the policy's trainer images "
                 "[\"HardenedModelPolicy c\"]"]
        assert governing_policies(status(policy_condition(lines, selecting=[], namespace="ml"))) == {"a",
                                                                                                      "b.example"}
        assert governing_policies(status(policy_condition([], selecting=["a", "z-9"], namespace="ml"))) == {"a",
                                                                                                             "z-9"}
        assert governing_policies(status(policy_condition([], selecting=["only"], namespace="ml"))) == {"only"}
        assert governing_policies(status(policy_condition([], selecting=[], namespace="ml"))) == set()
        assert governing_policies({}) == set() and governing_policies(None) == set()

    def test_a_refused_spec_says_its_jobs_are_not_started(self):
        refused = JobState("pending", "NotStarted", "not started: a HardenedModelPolicy refuses the spec")
        assert training_condition(refused, job_name="m-train-v2", report=None) == (
            "Unknown", "NotStarted", "training Job m-train-v2 not started: a HardenedModelPolicy refuses the spec")
        assert verification_conditions(refused, {})[0].reason == "NotStarted"


def test_history_keeps_what_served_newest_first_and_why_it_stopped():
    """Issue 29 point 3: a version enters once its rollout completed; the one it replaced gets servedTo and why;
    an unfinished rollout changes nothing; at most HISTORY_LIMIT entries."""
    from hardened_operator.status import HISTORY_LIMIT, history_status

    v1, v2 = ServingTarget("a" * 64, "v1"), ServingTarget("b" * 64, "v2")
    assert history_status(None, v1, complete=False, metrics=None, now=NOW) is None
    h = history_status(None, v1, complete=True, metrics={"epsilon": 7.9}, now=NOW)
    assert h == [{"version": "v1", "digest": "a" * 64, "servedFrom": NOW, "metrics": {"epsilon": 7.9}}]
    assert history_status(h, v1, complete=True, metrics=None, now=LATER) == h  # steady: unchanged
    assert history_status(h, v2, complete=False, metrics=None, now=LATER) == h  # still rolling out
    h2 = history_status(h, v2, complete=True, metrics=None, now=LATER)
    assert [e["version"] for e in h2] == ["v2", "v1"]
    assert h2[1] == {**h[0], "servedTo": LATER, "stopped": "replaced by version v2"}
    assert h == [{"version": "v1", "digest": "a" * 64, "servedFrom": NOW, "metrics": {"epsilon": 7.9}}]  # not mutated
    many = None
    for i in range(HISTORY_LIMIT + 3):
        many = history_status(many, ServingTarget(f"{i:064x}", f"v{i}"), complete=True, metrics=None, now=NOW)
    assert len(many) == HISTORY_LIMIT and many[0]["version"] == f"v{HISTORY_LIMIT + 2}"
