"""Reconcile one HardenedModel: observe the children, decide (pure), ensure, report.

Status is computed from what exists (the Jobs, their pods' termination
messages, the Deployment), never from memory, so a restarted operator reaches
the same status and makes nothing twice (children have deterministic names).

A version is rolled out only after its verification Job reported the
signature verified and the gates passed (mode Warn: gates may fail, with a
Warning; the signature never may - an unverified artifact has no digest to
pin). Until then, and when a version fails, the Deployment keeps the version
it has: the serving model is never replaced by an unverified one.

Every pass first checks the spec against the HardenedModelPolicies that select
the model's namespace (issue 27): a policy may change after admission, so the
operator checks again each time. A refused spec gets no Job and no change to
any child: the version already serving keeps serving, as built.
"""
from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass, field

from kubernetes.client.exceptions import ApiException

from . import countersigning, records, runkeys, versions
from .versions import uploaded_version_ids
from .policies import observe_policies
from .manifests import jobs, monitoring, objects
from hardened_model.artifacts import StoreURI
from hardened_model.countersign import PlatformKey
from hardened_model.contracts import training_version
from hardened_model.policy import (HardenedModelPolicy, countersignature_refusals, selects, trusted_public_keys,
                                   violations)
from hardened_model.signing import generate_key_pem
from hardened_model.gates import check_gates
from hardened_model.spec import IMAGE, GatesSection, HardenedModel, SpecError, parse_manifest, to_wire
from .status import (PHASES, Cond, JobState, ServingTarget, artifact_status, build_status, current_phase,
                     history_status, is_verified, job_state, last_failure, metrics_status, pinning_condition,
                     pod_problems, policy_condition, ready_condition, serving_condition, serving_status,
                     training_condition, training_status, verification_conditions)

VERIFIER_IMAGE_ENV = "HARDENED_VERIFIER_IMAGE"


@dataclass
class Observed:
    train_job: dict | None = None
    train_message: dict | None = None
    train_failures: list[dict] = field(default_factory=list)  # kube.failed_ranks of the training Job's pods
    train_image_id: str | None = None           # the trainer container's imageID, as the kubelet reported it
    train_image: str | None = None              # its image reference in that pod's spec (what the kubelet ran)
    train_node: str | None = None               # the node that pod ran on (spec.nodeName)
    train_run_key: str | None = None            # signing.method ephemeral: the key in that pod's status (runkeys)
    # spec.serving.version's record (records.read) and the countersignature it keeps (versions.py)
    pinned_record: tuple = (None, None)
    pinned_countersignature: dict | None = None
    own_countersignature: dict | None = None    # the one the spec's version's record keeps (records.restore's)
    # serving.onGateRegression Rollback: every version's record, and the countersignatures they keep, by version
    version_records: dict = field(default_factory=dict)
    version_countersignatures: dict = field(default_factory=dict)
    verify_job: dict | None = None
    verify_message: dict | None = None
    # the reports came from the version's record, not its Jobs' pods (gone): trusted for status and release,
    # never countersigned (records.py)
    verify_from_record: bool = False
    deployment: dict | None = None
    serving_pods: list[dict] = field(default_factory=list)
    monitoring_crds: bool = False
    colocate: bool = False                      # a ReadWriteOnce pvc:// store: every pod on one node
    missing_secrets: list[str] = field(default_factory=list)
    policies: list[HardenedModelPolicy] = field(default_factory=list)  # every HardenedModelPolicy in the cluster
    unreadable_policies: list[str] = field(default_factory=list)       # a refusal line for each one unparseable
    namespace_labels: dict[str, str] = field(default_factory=dict)     # the model's Namespace's labels


@dataclass
class Decision:
    ensure: list[dict]
    status: dict
    events: list[tuple[str, str, str]]          # (type, reason, message)
    failure: str | None = None                  # "training" | "verification" | "policy" when it just failed


def rollout_complete(dep: dict | None, desired: dict | None, replicas: int) -> tuple[bool, int]:
    """(the rollout of ``desired`` is complete, ready replicas), by `kubectl rollout status`'s rule: the
    controller has seen the latest generation, every replica runs the new template, none of the old ones is
    left, and every updated one is available. A stuck rollout (a new pod Pending, or refusing its artifact)
    is not complete even while an old pod serves (issue 14). ``desired`` is the Deployment this pass wants:
    one that still differs (patched in this very pass) is not rolled out yet."""
    from .kube import is_subset

    if dep is None:
        return False, 0
    st = dep.get("status") or {}
    ready = int(st.get("readyReplicas") or 0)
    if desired is not None and not is_subset({"spec": desired["spec"],
                                              "metadata": {"annotations": desired["metadata"]["annotations"]}}, dep):
        return False, ready
    updated, total, available = (int(st.get(k) or 0) for k in ("updatedReplicas", "replicas", "availableReplicas"))
    current = (st.get("observedGeneration") or 0) >= (dep["metadata"].get("generation") or 0)
    return current and updated >= replicas and total <= updated and available >= updated and ready >= replicas, ready


def retry_seconds(default: float) -> float:
    """How long kopf waits before retrying a pass; HARDENED_RETRY_SECONDS overrides every default (tests)."""
    return float(os.environ.get("HARDENED_RETRY_SECONDS", default))


def _rollout_stuck(dep: dict | None, digest: str | None) -> str | None:
    """The Deployment controller's verdict that the rollout of ``digest`` stopped progressing, if it gave one."""
    if dep is None or digest is None or (dep["metadata"].get("annotations") or {}).get("hardened.dev/digest") != digest:
        return None
    for c in (dep.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Progressing" and c.get("status") == "False":
            return f"{c.get('reason')}: {c.get('message')}"
    return None


_CREATED_NOW = JobState("running", "Running", "running")
_WAITING_FOR_TRAINING = JobState("pending", "Pending", "waiting for training")


def job_states(obs: Observed) -> tuple[JobState, JobState]:
    """The training and verification Jobs' states. A Job this pass creates counts as running, so the next pass,
    which sees it, reports the same; verification waits for training to succeed."""
    training = job_state(obs.train_job) if obs.train_job else _CREATED_NOW
    if training.state != "succeeded":
        return training, _WAITING_FOR_TRAINING
    return training, job_state(obs.verify_job) if obs.verify_job else _CREATED_NOW


def release(verification: JobState, report: dict, *, warn_mode: bool) -> tuple[bool, bool]:
    """(the verified version may roll out, it does so past a failed gate). Gates may fail under signing.mode Warn
    (with a Warning); the signature never may: an unverified artifact has no digest to pin."""
    if not is_verified(verification, report):
        return False, False
    warned = warn_mode and report.get("gatesPassed") is False
    return warned or report.get("gatesPassed") is True, warned


def judged(report: dict, gates: GatesSection, verify_job: dict | None) -> dict:
    """The verifier's report, its gates judged again when the spec's gates changed since its Job started.

    The version (and so the verify Job) does not cover spec.gates, so a verdict reached with the gates of
    the Job's ``--gates`` would otherwise be released after the gates changed: e.g. loosened below a
    HardenedModelPolicy's floor while the Job ran, refused, then raised again (issue 27). The metrics are the
    signed metrics.json as the platform's verifier read it, and a gate is a pure function of them."""
    if report.get("verified") is not True or not isinstance(report.get("metrics"), dict):
        return report
    args = [a for c in ((verify_job or {}).get("spec", {}).get("template", {}).get("spec", {})
                        .get("containers") or []) for a in (c.get("args") or [])]
    checked = args[args.index("--gates") + 1] if "--gates" in args[:-1] else None
    if checked is None or json.loads(checked) == to_wire(gates):
        return report
    results = check_gates(report["metrics"], gates)
    out = {**report, "gates": [r.describe() for r in results], "gatesPassed": all(r.passed for r in results)}
    out.pop("reason", None)
    if not out["gatesPassed"]:  # the verifier's own words for a failed gate
        out["reason"] = "signature verified; gates failed: " + "; ".join(r.describe() for r in results
                                                                          if not r.passed)
    return out


def observed_trainer(obs: Observed) -> dict[str, str] | None:
    """What the kubelet ran for the training pod, for the verify Job (issue 27): the trainer writes and signs
    its own provenance, so its claim of an image proves nothing until compared with this record, which it
    cannot write. None without a pod that reports it (the verifier then checks the claim alone)."""
    if not obs.train_image:
        return None
    return {"image": obs.train_image, **({"imageID": obs.train_image_id} if obs.train_image_id else {}),
            **({"node": obs.train_node} if obs.train_node else {})}


def policy_refusals(model: HardenedModel, obs: Observed, *, countersigning: bool) -> tuple[list[str], list[str]]:
    """(every refusal line, the names of the policies that select the model's namespace). A policy the operator
    cannot read refuses every model (fail closed, as sigstore's policy-controller does): a rule it does not
    understand, from a newer CRD say, is not one it may skip. ``countersigning``: the operator has a platform
    key (trust.requireCountersignature)."""
    refusals = [str(v) for v in violations(model, obs.policies, obs.namespace_labels)
                + countersignature_refusals(obs.policies, obs.namespace_labels, countersigning=countersigning)]
    refusals += obs.unreadable_policies
    selecting = sorted(p.metadata.name for p in obs.policies if selects(p, obs.namespace_labels))
    return refusals, selecting


def desired_children(model: HardenedModel, obs: Observed, training: JobState, target: ServingTarget | None,
                     uploaded_ids: dict[str, str] | None, *,
                     verifier_image: str) -> tuple[list[dict], dict | None]:
    """The children to ensure, in order, and the Deployment among them (None until a version is verified).
    Each Job is created once, when missing (their names carry the training version); the serving children are
    ensured on every pass, so drift is put back. The verifiers trust the policies' public keys of this pass
    (trust.publicKeys), when any selecting policy lists some."""
    trusted = trusted_public_keys(obs.policies, obs.namespace_labels)
    n = objects.names(model)
    pinned = versions.pin(model, n.version)  # an earlier version serves: the spec's neither trains nor verifies
    ensure: list[dict] = []
    if obs.train_job is None and not pinned:  # the NetworkPolicy first: the Job's pods are fenced in before they start
        # before the Job: its pods reach each other and resolve node 0 through these
        peers = [o for o in (jobs.build_training_peers_policy(model), jobs.build_training_service(model)) if o]
        ensure += [objects.build_jobs_network_policy(model), jobs.build_training_configmap(model), *peers,
                   jobs.build_training_job(model, colocate=obs.colocate)]
    ephemeral = model.spec.signing.method == "ephemeral"
    if training.state == "succeeded" and obs.verify_job is None and (obs.train_run_key or not ephemeral) \
            and not pinned:
        ensure.append(jobs.build_verify_job(model, version_ids=uploaded_ids, colocate=obs.colocate,
                                            verifier_image=verifier_image, observed_trainer=observed_trainer(obs),
                                            trusted_keys=(obs.train_run_key,) if ephemeral else trusted))
    kept = target.countersignature.envelope if target and target.version == n.version and target.countersignature \
        else None
    record = records.build(model, train_message=obs.train_message, observed_trainer=observed_trainer(obs),
                           verify_message=obs.verify_message if obs.verify_job is not None else None,
                           countersignature=kept)
    if record is not None:  # kept as long as the model, whatever becomes of the Jobs' pods
        ensure.append(record)
    if target is None:
        return ensure, None
    deployment = objects.build_deployment(model, digest=target.digest, version=target.version,
                                          version_ids=target.version_ids, colocate=obs.colocate,
                                          provenance=target.provenance, verifier_image=verifier_image,
                                          observed_trainer=target.observed_trainer,
                                          countersignature=target.countersignature,
                                          trusted_keys=(target.run_key,) if ephemeral else trusted,
                                          run_key=target.run_key, gates=target.gates)
    ensure += [objects.build_serving_configmap(model), deployment,
               objects.build_service(model), objects.build_metrics_service(model),
               objects.build_network_policy(model), objects.build_pdb(model)]
    if obs.monitoring_crds and model.spec.monitoring.service_monitor:
        ensure.append(monitoring.build_service_monitor(model))
    if obs.monitoring_crds and model.spec.monitoring.prometheus_rule:
        ensure.append(monitoring.build_prometheus_rule(model))
    return ensure, deployment


_REFUSED = JobState("pending", "NotStarted", "not started: a HardenedModelPolicy refuses the spec (PolicyAllowed)")


def decide(model: HardenedModel, obs: Observed, previous: dict, *, now: str,
           verifier_image: str = objects.DEFAULT_VERIFIER_IMAGE,
           platform_key: PlatformKey | None = None) -> Decision:
    """One pass's children, status and Events, from what it observed (pure, the clock injected: a test
    replays any world, a restarted operator reaches the same answer).

    The steps: the policies' verdict; where the Jobs stand; whether the verified version may roll out; the
    version to serve (the one just released, else the one the Deployment pins); the children that takes;
    the conditions, phase and last failure, computed in status.py from the observed state alone; the Events
    for what changed since ``previous``. A spec a policy refuses changes nothing: no Job, no child ensured
    (a Deployment rebuilt from the refused spec could run a refused server image), no release; status
    reports the Deployment as it is. ``verifier_image``: what the verify Job and the init container run.
    ``platform_key``: the operator's, when it countersigns verified versions (countersigning.py); injected
    like the clock, so decide stays a function of its arguments.
    """
    spec, n, previous = model.spec, objects.names(model), previous or {}
    version = training_version(spec)
    refusals, selecting = policy_refusals(model, obs, countersigning=platform_key is not None)
    training, verification = job_states(obs)
    ephemeral = spec.signing.method == "ephemeral"
    if ephemeral and training.state == "succeeded" and obs.verify_job is None and not obs.train_run_key:
        verification = JobState("failed", "NoPerRunKey", runkeys.MISSING)
    pinned = versions.pin(model, version)
    if pinned:  # spec.serving.version: that earlier version serves, the spec's own neither trains nor rolls out
        held = JobState("pending", "NotStarted", f"not started: spec.serving.version pins version {pinned}")
        training = training if obs.train_job else held
        verification = verification if obs.verify_job else held
    if refusals:  # what has not started will not start
        training = training if obs.train_job else _REFUSED
        verification = verification if obs.verify_job or training.state != "succeeded" else _REFUSED
    report = judged(obs.verify_message or {}, spec.gates, obs.verify_job)
    released, warned = release(verification, report, warn_mode=spec.signing.mode == "Warn")
    released, warned = released and not refusals and not pinned, warned and not refusals and not pinned
    verified_report = report if is_verified(verification, report) else None
    uploaded_ids = uploaded_version_ids(obs.train_message)
    pin_refused = regressed = None
    if pinned:
        target, pin_refused = versions.pinned_target(model, pinned, obs, previous.get("history"), platform_key,
                                                     now=now)
    else:
        target = versions.released_target(model, obs, version, report, released, uploaded_ids, platform_key,
                                          now=now)
        target, regressed = versions.on_regression(model, obs, target, report, version,
                                                   previous.get("history"), platform_key, now=now)
    ensure, desired_dep = ([], None) if refusals else desired_children(model, obs, training, target, uploaded_ids,
                                                                      verifier_image=verifier_image)
    complete, ready_replicas = rollout_complete(obs.deployment, desired_dep, spec.serving.replicas)
    problems = pod_problems(obs.serving_pods) if target and not complete else []
    current = target is not None and target.version == (pinned or version)
    # the spec's own version serves, but its verdict no longer releases it: a gate raised since (onGateRegression)
    regression = current and not pinned and not released and verification.state in ("succeeded", "failed")
    served_report = obs.pinned_record[1] if pinned and current else verified_report

    conditions = {"PolicyAllowed": policy_condition(refusals, selecting=selecting,
                                                    namespace=model.metadata.namespace or ""),
                  "TrainingSucceeded": training_condition(training, job_name=n.train, report=obs.train_message,
                                                         failures=obs.train_failures if spec.training.distributed
                                                         else None)}
    conditions["SignatureVerified"], conditions["GatesPassed"] = verification_conditions(verification, report)
    if StoreURI.parse(spec.artifacts.store).scheme == "s3":
        conditions["ArtifactPinned"] = pinning_condition(training, obs.train_message)
    conditions["ServingReady"] = serving_condition(target, complete=complete, ready_replicas=ready_replicas,
                                                   replicas=spec.serving.replicas, problems=problems)
    phase, failed, why = current_phase(
        conditions, training=training, verification=verification, released=released, complete=complete,
        stuck=None if complete or target is None else _rollout_stuck(obs.deployment, target.digest),
        deployment=n.serving,
        kept_version=target.version if target and (refusals or not current or regression) else None,
        pinned=pinned is not None, pin_refused=pin_refused)
    conditions["Ready"] = ready_condition(why, serving=conditions["ServingReady"],
                                          rolled_out=complete and current and not refusals and not regression,
                                          warned=warned)
    prev_fail = previous.get("lastFailure") or {}
    status = build_status(
        previous, generation=model.metadata.generation or 0, phase=phase, now=now, conditions=conditions,
        training=training_status(obs.train_job, job_name=n.train, config_digest=version,
                                 image_id=obs.train_image_id, report=obs.train_message),
        metrics=metrics_status(served_report),
        artifact=artifact_status(objects.version_location(model)[0], verified_report, version_ids=uploaded_ids),
        serving=serving_status(target, url=_service_url(model), ready_replicas=ready_replicas),
        lastFailure=last_failure(prev_fail, failed, why, settled=phase == "Serving" and current, now=now),
        history=history_status(previous.get("history"), target, complete=complete, now=now,
                               metrics=metrics_status(served_report) if current else None,
                               stopped=f"rolled back to version {pinned} (spec.serving.version)" if pinned
                               else regressed))
    events = _events(previous, warned=warned, version=version, report=report, problems=bool(problems),
                     serving=conditions["ServingReady"], phase=phase, why=why, policy=conditions["PolicyAllowed"])
    newly_failed = failed if failed and (prev_fail.get("stage"), prev_fail.get("reason")) != (failed, why.reason) \
        else None
    return Decision(ensure=ensure, status=status, events=events, failure=newly_failed)


def _service_url(model: HardenedModel) -> str:
    return f"{'https' if model.spec.serving.tls else 'http'}://{model.metadata.name}.{model.metadata.namespace}.svc"


def _events(previous: dict, *, warned: bool, version: str, report: dict, problems: bool, serving: Cond, phase: str,
            why: Cond, policy: Cond) -> list[tuple[str, str, str]]:
    """The Events of a pass: each pass that serves past a failed gate; a pod problem, the phase and a policy's
    refusal, when they change (not every pass that sees them). A refusal's Warning says why the phase is Failed:
    no second Event for the phase."""
    events = []
    if warned:
        events.append(("Warning", "GatesFailedWarnMode", f"serving version {version} although it missed a gate "
                                                         f"(signing.mode Warn): {report.get('reason')}"))
    prev_serving = next((c for c in previous.get("conditions") or [] if c.get("type") == "ServingReady"), {})
    if problems and prev_serving.get("reason") != serving.reason:
        events.append(("Warning", serving.reason, serving.message))
    prev_policy = next((c for c in previous.get("conditions") or [] if c.get("type") == "PolicyAllowed"), {})
    if policy.status == "False":
        if (prev_policy.get("status"), prev_policy.get("message")) != (policy.status, policy.message):
            events.append(("Warning", policy.reason, why.message))
    elif phase != previous.get("phase"):
        events.append(("Warning" if phase == "Failed" else "Normal", phase, why.message))
    return events


# -------------------------------------------------------------------- I/O
def observe(kube, model: HardenedModel, history: list[dict] | None = None) -> Observed:
    """What one pass reads; ``history``: the model's status.history (the versions a rollback may serve)."""
    from .kube import container_image, failed_ranks, job_pods, termination_message

    ns, n = model.metadata.namespace, objects.names(model)
    obs = Observed(train_job=kube.get("Job", ns, n.train), verify_job=kube.get("Job", ns, n.verify),
                   deployment=kube.get("Deployment", ns, n.serving),
                   monitoring_crds=kube.crd_exists("prometheusrules.monitoring.coreos.com"))
    if obs.deployment is not None:  # why pods are not ready: the Deployment alone only counts them
        obs.serving_pods = kube.list("Pod", ns, objects.serving_selector(model))
    if obs.train_job is not None and job_state(obs.train_job)[0] in ("succeeded", "failed"):
        pods = job_pods(kube, ns, n.train)  # one list for the trainer's message and its image
        obs.train_message = termination_message(pods)
        obs.train_run_key = runkeys.reported(obs.train_message)  # the pods' message only, never a record's
        obs.train_failures = failed_ranks(pods)
        ran = container_image(pods, "trainer") or {}
        obs.train_image, obs.train_image_id, obs.train_node = ran.get("image"), ran.get("imageID"), ran.get("node")
    if obs.verify_job is not None and job_state(obs.verify_job)[0] in ("succeeded", "failed"):
        obs.verify_message = termination_message(job_pods(kube, ns, n.verify))
    if obs.verify_job is not None and obs.verify_message is None:  # the pods are gone: the record remains
        record = kube.get("ConfigMap", ns, n.record)
        records.restore(obs, *records.read(record, n.version))
        obs.own_countersignature = records.kept_countersignature(record, n.version)
    pinned = versions.pin(model, n.version)
    if pinned:  # a rollback: what that version's record says (versions.rollback trusts it for gates only)
        record = kube.get("ConfigMap", ns, records.name(model, pinned))
        obs.pinned_record = records.read(record, pinned)
        obs.pinned_countersignature = records.kept_countersignature(record, pinned)
    if model.spec.serving.on_gate_regression == "Rollback":  # versions.on_regression may need any that served
        for kept in {e.get("version") for e in history or [] if isinstance(e, dict) and e.get("version")}:
            record = kube.get("ConfigMap", ns, records.name(model, kept))
            obs.version_records[kept] = records.read(record, kept)
            obs.version_countersignatures[kept] = records.kept_countersignature(record, kept)
    observe_policies(kube, model, obs)
    return obs


def verifier_image() -> str:
    """The verifier image the operator was installed with (HARDENED_VERIFIER_IMAGE, the chart's
    verifier.image), else the built-in server image. The platform's choice, never a spec's: the program that
    decides whether a signature holds must not be one a tenant picked (issue 27)."""
    image = os.environ.get(VERIFIER_IMAGE_ENV, "").strip() or objects.DEFAULT_VERIFIER_IMAGE
    if not re.match(IMAGE, image) or len(image) > 512:
        raise ValueError(f"{VERIFIER_IMAGE_ENV}: Invalid value: {image!r}: not an image reference "
                         "(repository[:tag] or repository@sha256:...)")
    return image


def needs_colocation(pvc: dict | None) -> bool:
    """A ReadWriteOnce claim (an EBS volume, say) attaches to one node at a time: the training, verify and
    serving pods that mount it must run on one node, or the second one waits on Multi-Attach forever."""
    modes = set(((pvc or {}).get("spec") or {}).get("accessModes") or [])
    return bool(modes) and not modes & {"ReadWriteMany", "ReadOnlyMany"}


def ensure_prerequisites(kube, model: HardenedModel) -> tuple[list[str], dict | None]:
    """Generate the Secrets the spec leaves to the operator; list what it names that is missing or unusable.
    Also returns the pvc:// store's PersistentVolumeClaim (None for s3://).

    A pvc:// store must exist as a PersistentVolumeClaim that several pods may
    mount. An s3:// store is not checked here: the operator holds no AWS
    credentials (the trainer's IRSA role does), so a missing bucket shows as a
    failed training Job with the trainer's message in status.lastFailure.
    """
    ns, s, n = model.metadata.namespace, model.spec, objects.names(model)
    missing = []
    refs = []
    if s.signing.method == "key":
        refs += [s.signing.private_key_secret, s.signing.public_key_secret]
    refs.append(s.serving.api_keys_secret)
    for ref, field_ in zip(refs, ["spec.signing.privateKeySecret", "spec.signing.publicKeySecret",
                                  "spec.serving.apiKeysSecret"][-len(refs):]):
        if ref is None:
            continue
        secret = kube.get("Secret", ns, ref.name)
        if secret is None or ref.key not in (secret.get("data") or {}) and ref.key not in (
                secret.get("stringData") or {}):
            missing.append(f"missing {field_}: Secret {ns}/{ref.name} with key {ref.key!r}")
    needed = []  # (field, kind, name, keys)
    if s.serving.tls:
        needed.append(("spec.serving.tls.secretName", "Secret", s.serving.tls.secret_name, ("tls.crt", "tls.key")))
        if s.serving.tls.client_ca_secret:
            needed.append(("spec.serving.tls.clientCASecret", "Secret", s.serving.tls.client_ca_secret, ("ca.crt",)))
    if s.serving.auth.jwt:
        ref = s.serving.auth.jwt.jwks
        needed.append(("spec.serving.auth.jwt.jwks", ref.kind, ref.name, (ref.key,)))
    if s.signing.method == "keyless" and s.signing.keyless and s.signing.keyless.trust_config:
        ref = s.signing.keyless.trust_config
        needed.append(("spec.signing.keyless.trustConfig", ref.kind, ref.name, (ref.key,)))
    for field_, kind, name, keys in needed:
        obj = kube.get(kind, ns, name) or {}
        present = set(obj.get("data") or {}) | set(obj.get("stringData") or {})
        if not obj or not set(keys) <= present:
            missing.append(f"missing {field_}: {kind} {ns}/{name} with " + " and ".join(repr(k) for k in keys))
    from hardened_model.artifacts import StoreURI

    store = StoreURI.parse(s.artifacts.store)
    pvc = kube.get("PersistentVolumeClaim", ns, store.bucket) if store.scheme == "pvc" else None
    if store.scheme == "pvc" and pvc is None:
        missing.append(f"missing spec.artifacts.store: PersistentVolumeClaim {ns}/{store.bucket}")
    elif "ReadWriteOncePod" in ((pvc or {}).get("spec") or {}).get("accessModes", []):
        missing.append(f"spec.artifacts.store: PersistentVolumeClaim {ns}/{store.bucket} is ReadWriteOncePod, "
                       "but the training, verify and serving pods all mount it: use ReadWriteMany, ReadWriteOnce "
                       "(the pods then share one node) or an s3:// store")
    if s.signing.method == "key" and s.signing.private_key_secret is None \
            and kube.get("Secret", ns, n.signing_secret) is None:
        kube.create(objects.build_signing_secret(model, *generate_key_pem()))
    if s.serving.auth.api_keys and s.serving.api_keys_secret is None \
            and kube.get("Secret", ns, n.api_keys_secret) is None:
        kube.create(objects.build_api_keys_secret(model, "hm_" + secrets.token_urlsafe(24)))
    return missing, pvc


def parse_body(body: dict) -> HardenedModel:
    meta = body.get("metadata") or {}
    return parse_manifest({"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
                           "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "generation", "labels")
                                        if meta.get(k) is not None},
                           "spec": body.get("spec")})


__all__ = ["Observed", "Decision", "decide", "observe", "ensure_prerequisites", "parse_body", "SpecError"]


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _same(a: dict | None, b: dict) -> bool:
    return (a or {}) == b


def handle_model(body: dict, *, kube, patch, event, metrics, now=_now) -> str:
    """One reconcile pass for one HardenedModel; returns the phase. Raises kopf errors for kopf's retries."""
    import kopf

    previous = dict(body.get("status") or {})
    gen = (body.get("metadata") or {}).get("generation") or 0
    try:
        model = parse_body(body)
    except SpecError as exc:
        message = str(exc)
        status = build_status(previous, generation=gen, phase="Failed", now=now(),
                              conditions={"Ready": ("False", "InvalidSpec", message)},
                              lastFailure={"stage": "spec", "reason": "InvalidSpec", "message": message[:4096],
                                           "time": (previous.get("lastFailure") or {}).get("time") or now()})
        if not _same({k: previous.get(k) for k in status}, status):
            patch.status.update(status)
            event("Warning", "InvalidSpec", message)
        metrics.reconciles.labels("invalid").inc()
        raise kopf.PermanentError(f"invalid spec: {message}")
    obs = observe(kube, model, previous.get("history"))
    # a refused spec gets nothing, generated Secrets included; its status names the policy, not a missing Secret
    key = countersigning.platform_key()
    refused = policy_refusals(model, obs, countersigning=key is not None)[0]
    missing, pvc = ([], None) if refused else ensure_prerequisites(kube, model)
    if missing:
        message = "; ".join(missing)
        status = build_status(previous, generation=gen, phase=previous.get("phase") or "Pending", now=now(),
                              conditions={**{c["type"]: (c["status"], c["reason"], c["message"])
                                             for c in previous.get("conditions") or [] if c["type"] != "Ready"},
                                          "Ready": ("False", "PrerequisiteMissing", message)})
        if not _same({k: previous.get(k) for k in status}, status):
            patch.status.update(status)
            event("Warning", "PrerequisiteMissing", message)
        metrics.reconciles.labels("waiting").inc()
        raise kopf.TemporaryError(message, delay=retry_seconds(30))
    obs.colocate = needs_colocation(pvc)
    decision = decide(model, obs, previous, now=now(), verifier_image=verifier_image(), platform_key=key)
    rejected = []
    for obj in decision.ensure:
        try:
            result = kube.ensure(obj)
        except ApiException as exc:
            refused = rejection(exc)
            if not refused:
                raise  # 409, 429, 5xx, a dropped connection: kopf retries the pass
            rejected.append(f"{obj['kind']} {obj['metadata']['name']}: {refused}")
            continue
        if result != "unchanged":
            event("Normal", result.title(), f"{obj['kind']} {obj['metadata']['name']} {result}")
    if rejected:
        decision = with_rejections(decision, rejected, previous, now=now())
    if not _same({k: previous.get(k) for k in decision.status}, decision.status) or set(previous) - set(
            decision.status) - {"kopf"}:
        patch.status.update(decision.status)
        for key in set(previous) - set(decision.status) - {"kopf"}:
            patch.status[key] = None
    for type_, reason, message in decision.events:
        event(type_, reason, message)
    if decision.failure == "training":
        metrics.training_failures.labels(model.metadata.namespace, model.metadata.name).inc()
    elif decision.failure == "verification":
        metrics.verification_failures.labels(model.metadata.namespace, model.metadata.name).inc()
    figures = decision.status.get("metrics") or {}
    for key, gauge in metrics.model_gauges().items():
        if figures.get(key) is not None:
            gauge.labels(model.metadata.namespace, model.metadata.name).set(figures[key])
    if rejected:
        metrics.reconciles.labels("rejected").inc()
        # what the API server refused may be admitted later (a quota raised, a webhook fixed, an operator upgrade)
        raise kopf.TemporaryError("; ".join(rejected), delay=retry_seconds(60))
    metrics.reconciles.labels("ok").inc()
    return decision.status["phase"]


def rejection(exc) -> str | None:
    """The API server's own message when it refused an object for good (400, 403, 404, 422: invalid,
    forbidden by RBAC or admission, namespace gone), else None (worth an immediate retry)."""
    if exc.status not in (400, 403, 404, 422):
        return None
    try:
        message = json.loads(exc.body).get("message")
    except (TypeError, ValueError):
        message = None
    return f"the API server refused it ({exc.status} {exc.reason}): {message or exc.body}"


def with_rejections(decision: Decision, rejected: list[str], previous: dict, *, now: str) -> Decision:
    """The decision's status once the API server refused children it ensures (issue 14: a Deployment refused
    with 422 left the model 'Verifying' with no word of why): Failed, Ready False with the server's message,
    lastFailure, a Warning Event. The previous version's objects, if any, are untouched and keep serving."""
    from .status import condition

    message = "; ".join(rejected)[:4000]
    status = dict(decision.status)
    gen = status["observedGeneration"]
    status["conditions"] = [condition(previous.get("conditions") or [], c["type"], "False", "ChildRejected",
                                      message, generation=gen, now=now)
                            if c["type"] == "Ready" else c for c in status["conditions"]]
    status["phase"] = "Failed"
    prev = previous.get("lastFailure") or {}
    status["lastFailure"] = {"stage": "apply", "reason": "ChildRejected", "message": message,
                             "time": prev.get("time") if prev.get("reason") == "ChildRejected" else now}
    events = [e for e in decision.events if e[1] not in PHASES]  # the phase is Failed now, said below
    if prev.get("reason") != "ChildRejected" or prev.get("message") != message:
        events.append(("Warning", "ChildRejected", message))
    return Decision(ensure=decision.ensure, status=status, events=events, failure=decision.failure)
