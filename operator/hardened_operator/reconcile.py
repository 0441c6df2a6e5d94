"""Reconcile one HardenedModel: observe the children, decide (pure), ensure, report.

Status is computed from what exists (the Jobs, their pods' termination
messages, the Deployment), never from memory, so a restarted operator reaches
the same status and makes nothing twice (children have deterministic names).

A version is rolled out only after its verification Job reported the
signature verified and the gates passed (mode Warn: gates may fail, with a
Warning; the signature never may - an unverified artifact has no digest to
pin). Until then, and when a version fails, the Deployment keeps the version
it has: the serving model is never replaced by an unverified one.
"""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field

from .manifests import monitoring, objects
from .manifests.trainer_config import training_version
from .signing import SIGNATURE_NAME, generate_key_pem
from .spec import HardenedModel, SpecError, parse_manifest
from .status import build_status, job_state


@dataclass
class Observed:
    train_job: dict | None = None
    train_message: dict | None = None
    verify_job: dict | None = None
    verify_message: dict | None = None
    deployment: dict | None = None
    monitoring_crds: bool = False
    missing_secrets: list[str] = field(default_factory=list)


@dataclass
class Decision:
    ensure: list[dict]
    status: dict
    events: list[tuple[str, str, str]]          # (type, reason, message)
    failure: str | None = None                  # "training" | "verification" when a version just failed


def _deployment_ready(dep: dict | None, replicas: int, digest: str | None) -> tuple[bool, int]:
    if dep is None:
        return False, 0
    st = dep.get("status") or {}
    ready = int(st.get("readyReplicas") or 0)
    current = (st.get("observedGeneration") or 0) >= (dep["metadata"].get("generation") or 0)
    pinned = (dep["metadata"].get("annotations") or {}).get("hardened.dev/digest")
    return (current and ready >= replicas and int(st.get("updatedReplicas") or 0) >= replicas
            and (digest is None or pinned == digest)), ready


def retry_seconds(default: float) -> float:
    """How long kopf waits before retrying a pass; HARDENED_RETRY_SECONDS overrides every default (tests)."""
    return float(os.environ.get("HARDENED_RETRY_SECONDS", default))


def _json_or_none(text: str | None):
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _signature_version_id(version_ids: dict[str, str] | None) -> str | None:
    """status.artifact.versionId: the S3 version of the signature bundle, which pins all the rest."""
    return next((v for k, v in (version_ids or {}).items() if k.endswith("/" + SIGNATURE_NAME)), None)


def _rollout_stuck(dep: dict | None, digest: str | None) -> str | None:
    """The Deployment controller's verdict that the rollout of ``digest`` stopped progressing, if it gave one."""
    if dep is None or digest is None or (dep["metadata"].get("annotations") or {}).get("hardened.dev/digest") != digest:
        return None
    for c in (dep.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Progressing" and c.get("status") == "False":
            return f"{c.get('reason')}: {c.get('message')}"
    return None


def decide(model: HardenedModel, obs: Observed, previous: dict, *, now: str) -> Decision:
    spec, n = model.spec, objects.names(model)
    gen = model.metadata.generation or 0
    version = training_version(spec)
    ensure: list[dict] = []
    events: list[tuple[str, str, str]] = []

    if obs.train_job is None:
        ensure += [objects.build_jobs_network_policy(model), objects.build_training_configmap(model),
                   objects.build_training_job(model)]
    # A Job created in this pass counts as running, so the next pass reports the same.
    t_state, t_reason, t_msg = job_state(obs.train_job) if obs.train_job else ("running", "Running", "running")
    v_state, v_reason, v_msg = "pending", "Pending", "waiting for training"
    # S3 object versions of what the trainer uploaded (s3:// stores): every later download is pinned to them
    uploaded_ids = {k: v for k, v in ((obs.train_message or {}).get("versionIds") or {}).items() if v} or None
    if t_state == "succeeded":
        if obs.verify_job is None:
            ensure.append(objects.build_verify_job(model, version_ids=uploaded_ids))
        v_state, v_reason, v_msg = job_state(obs.verify_job) if obs.verify_job else ("running", "Running", "running")
    vm = obs.verify_message or {}
    verified = v_state in ("succeeded", "failed") and vm.get("verified") is True
    gates_passed = vm.get("gatesPassed") if verified else None
    rollout = v_state == "succeeded" and verified and gates_passed is True
    warn_rollout = (spec.signing.mode == "Warn" and v_state == "failed" and verified and gates_passed is False)

    dep = obs.deployment
    dep_ann = (dep or {}).get("metadata", {}).get("annotations") or {}
    dep_ids = _json_or_none(dep_ann.get(objects.VERSION_IDS_ANNOTATION))
    if rollout or warn_rollout:
        # the trainer's report, or (its pod gone) what the Deployment already pins for this version
        target = (vm["digest"], version, uploaded_ids or (dep_ids if dep_ann.get("hardened.dev/version") == version
                                                          else None))
    elif dep is not None and dep_ann.get("hardened.dev/digest"):
        target = (dep_ann["hardened.dev/digest"], dep_ann.get("hardened.dev/version", version), dep_ids)
    else:
        target = None
    if target:
        ensure += [objects.build_serving_configmap(model),
                   objects.build_deployment(model, digest=target[0], version=target[1], version_ids=target[2]),
                   objects.build_service(model), objects.build_metrics_service(model),
                   objects.build_network_policy(model), objects.build_pdb(model)]
        if obs.monitoring_crds and spec.monitoring.service_monitor:
            ensure.append(monitoring.build_service_monitor(model))
        if obs.monitoring_crds and spec.monitoring.prometheus_rule:
            ensure.append(monitoring.build_prometheus_rule(model))
    if warn_rollout:
        events.append(("Warning", "GatesFailedWarnMode", f"serving version {version} although it missed a gate "
                                                         f"(signing.mode Warn): {vm.get('reason')}"))

    # ---------------------------------------------------------- conditions
    tm = obs.train_message or {}
    train_cond = {"running": ("Unknown", "Training", f"training Job {n['train']} is running"),
                  "succeeded": ("True", "Succeeded", f"training Job {n['train']} completed"),
                  "failed": ("False", "TrainingFailed" if t_reason in ("Failed", "BackoffLimitExceeded") else t_reason,
                             f"training Job {n['train']} failed ({t_reason}): {tm.get('message') or t_msg}")}[t_state]
    if v_state in ("pending", "running"):
        sig_cond = gate_cond = ("Unknown", "Pending", "waiting for the verification Job")
    elif verified:
        sig_cond = ("True", "Verified", f"signed by {vm.get('signer')}; digest {vm.get('digest')}")
        gate_cond = ("True", "Passed", "; ".join(vm.get("gates") or []) or "no gates configured") if gates_passed \
            else ("False", "GatesFailed", vm.get("reason") or "a gate failed")
    else:
        sig_cond = ("False", "VerificationFailed", vm.get("reason") or f"verification Job failed: {v_msg}")
        gate_cond = ("Unknown", "NotChecked", "signature did not verify")
    serving_digest = target[0] if target else None
    ready_dep, ready_replicas = _deployment_ready(dep, spec.serving.replicas, serving_digest)
    serving_current = target is not None and target[1] == version
    if target is None:
        serve_cond = ("False", "NotDeployed", "no verified version yet")
    elif ready_dep:
        serve_cond = ("True", "Ready", f"{ready_replicas}/{spec.serving.replicas} replicas serving version "
                                       f"{target[1]} (digest {target[0][:16]})")
    else:
        serve_cond = ("False", "RollingOut", f"{ready_replicas}/{spec.serving.replicas} replicas ready")

    stuck = _rollout_stuck(dep, serving_digest) if not ready_dep else None
    failed_stage = None
    if stuck:
        # The new pods never became ready before the Deployment's progress deadline: the init container
        # refused the artifact (changed after verification) or the server crashed. maxUnavailable 0 keeps the
        # previous pods serving; the operator says so and does not retry a version that cannot start.
        failed_stage, phase = "rollout", "Failed"
        why = ("False", "RolloutStuck", f"Deployment {n['serving']} did not progress ({stuck}); the pods of the "
                                        "previous version keep serving; kubectl describe pods shows why the new "
                                        "ones do not start")
    elif t_state == "failed":
        failed_stage, phase, why = "training", "Failed", train_cond
    elif v_state in ("succeeded", "failed") and not (rollout or warn_rollout):
        failed_stage, phase = "verification", "Failed"
        why = sig_cond if sig_cond[0] == "False" else gate_cond
    elif t_state == "running":
        phase, why = "Training", train_cond
    elif v_state in ("pending", "running"):
        phase, why = "Verifying", sig_cond
    elif not ready_dep:
        phase, why = "RollingOut", serve_cond
    else:
        phase, why = "Serving", serve_cond
    if failed_stage and target is not None and not serving_current:
        why = (why[0], why[1], why[2] + f"; version {target[1]} keeps serving")
    ready = ("True", "Ready", serve_cond[2]) if ready_dep and serving_current else ("False", why[1], why[2])
    if warn_rollout and ready[0] == "True":
        ready = ("True", "ReadyWithWarnings", f"{serve_cond[2]}; gates failed (signing.mode Warn)")

    prev_fail = (previous or {}).get("lastFailure") or {}
    last_failure = None
    if failed_stage:
        last_failure = {"stage": failed_stage, "reason": why[1], "message": why[2],
                        "time": prev_fail.get("time") if prev_fail.get("reason") == why[1]
                        and prev_fail.get("stage") == failed_stage else now}
    elif prev_fail and not (phase == "Serving" and serving_current):
        last_failure = prev_fail  # kept until a later version succeeds
    metrics = {k: vm["metrics"].get(k) for k in ("cleanAccuracy", "robustAccuracy", "epsilon", "membershipAUC")
               if vm.get("metrics", {}).get(k) is not None} if verified and vm.get("metrics") else None
    uri, _ = objects.version_location(model)
    status = build_status(
        previous, generation=gen, phase=phase, now=now,
        conditions={"TrainingSucceeded": train_cond, "SignatureVerified": sig_cond, "GatesPassed": gate_cond,
                    "ServingReady": serve_cond, "Ready": ready},
        training={"jobName": n["train"], "configDigest": version,
                  "startTime": ((obs.train_job or {}).get("status") or {}).get("startTime"),
                  "completionTime": ((obs.train_job or {}).get("status") or {}).get("completionTime")},
        metrics=metrics or None,
        artifact={k: v for k, v in {"uri": uri, "digest": vm.get("digest") if verified else None,
                                    "signer": vm.get("signer") if verified else None,
                                    "versionId": _signature_version_id(uploaded_ids) if verified else None}.items()
                  if v},
        serving={k: v for k, v in {"url": f"http://{model.metadata.name}.{model.metadata.namespace}.svc",
                                   "readyReplicas": ready_replicas, "servedDigest": serving_digest}.items()
                 if v is not None} if target else None,
        lastFailure=last_failure)
    if phase != (previous or {}).get("phase"):
        kind = "Warning" if phase == "Failed" else "Normal"
        events.append((kind, phase, why[2]))
    newly_failed = failed_stage if failed_stage and (prev_fail.get("stage"), prev_fail.get("reason")) != (
        failed_stage, why[1]) else None
    return Decision(ensure=ensure, status=status, events=events, failure=newly_failed)


# -------------------------------------------------------------------- I/O
def observe(kube, model: HardenedModel) -> Observed:
    from .kube import termination_message

    ns, n = model.metadata.namespace, objects.names(model)
    obs = Observed(train_job=kube.get("Job", ns, n["train"]), verify_job=kube.get("Job", ns, n["verify"]),
                   deployment=kube.get("Deployment", ns, n["serving"]),
                   monitoring_crds=kube.crd_exists("prometheusrules.monitoring.coreos.com"))
    if obs.train_job is not None and job_state(obs.train_job)[0] in ("succeeded", "failed"):
        obs.train_message = termination_message(kube, ns, n["train"])
    if obs.verify_job is not None and job_state(obs.verify_job)[0] in ("succeeded", "failed"):
        obs.verify_message = termination_message(kube, ns, n["verify"])
    return obs


def ensure_prerequisites(kube, model: HardenedModel) -> list[str]:
    """Generate the Secrets the spec leaves to the operator; list what it names that is missing.

    A pvc:// store must exist as a PersistentVolumeClaim. An s3:// store is not
    checked here: the operator holds no AWS credentials (the trainer's IRSA role
    does), so a missing bucket shows as a failed training Job with the trainer's
    message in status.lastFailure.
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
            missing.append(f"{field_}: Secret {ns}/{ref.name} with key {ref.key!r}")
    from .artifacts import StoreURI

    store = StoreURI.parse(s.artifacts.store)
    if store.scheme == "pvc" and kube.get("PersistentVolumeClaim", ns, store.bucket) is None:
        missing.append(f"spec.artifacts.store: PersistentVolumeClaim {ns}/{store.bucket}")
    if s.signing.method == "key" and s.signing.private_key_secret is None \
            and kube.get("Secret", ns, n["signing-secret"]) is None:
        kube.create(objects.build_signing_secret(model, *generate_key_pem()))
    if s.serving.api_keys_secret is None and kube.get("Secret", ns, n["api-keys-secret"]) is None:
        kube.create(objects.build_api_keys_secret(model, "hm_" + secrets.token_urlsafe(24)))
    return missing


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
    missing = ensure_prerequisites(kube, model)
    if missing:
        message = "missing " + "; ".join(missing)
        status = build_status(previous, generation=gen, phase=previous.get("phase") or "Pending", now=now(),
                              conditions={**{c["type"]: (c["status"], c["reason"], c["message"])
                                             for c in previous.get("conditions") or [] if c["type"] != "Ready"},
                                          "Ready": ("False", "PrerequisiteMissing", message)})
        if not _same({k: previous.get(k) for k in status}, status):
            patch.status.update(status)
            event("Warning", "PrerequisiteMissing", message)
        metrics.reconciles.labels("waiting").inc()
        raise kopf.TemporaryError(message, delay=retry_seconds(30))
    obs = observe(kube, model)
    decision = decide(model, obs, previous, now=now())
    for obj in decision.ensure:
        result = kube.ensure(obj)
        if result != "unchanged":
            event("Normal", result.title(), f"{obj['kind']} {obj['metadata']['name']} {result}")
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
    for key, gauge in (("epsilon", metrics.epsilon), ("cleanAccuracy", metrics.clean_accuracy),
                       ("robustAccuracy", metrics.robust_accuracy), ("membershipAUC", metrics.membership_auc)):
        if figures.get(key) is not None:
            gauge.labels(model.metadata.namespace, model.metadata.name).set(figures[key])
    metrics.reconciles.labels("ok").inc()
    return decision.status["phase"]
