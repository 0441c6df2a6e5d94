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

from kubernetes.client.exceptions import ApiException

from hardened_model.gates import STATUS_METRICS
from .manifests import monitoring, objects
from hardened_model.contracts import training_version
from hardened_model.signing import SIGNATURE_NAME, generate_key_pem
from hardened_model.spec import HardenedModel, SpecError, parse_manifest
from .status import PHASES, build_status, job_state, pod_problems


@dataclass
class Observed:
    train_job: dict | None = None
    train_message: dict | None = None
    train_image_id: str | None = None           # the trainer container's imageID, as the kubelet reported it
    verify_job: dict | None = None
    verify_message: dict | None = None
    deployment: dict | None = None
    serving_pods: list[dict] = field(default_factory=list)
    monitoring_crds: bool = False
    colocate: bool = False                      # a ReadWriteOnce pvc:// store: every pod on one node
    missing_secrets: list[str] = field(default_factory=list)


@dataclass
class Decision:
    ensure: list[dict]
    status: dict
    events: list[tuple[str, str, str]]          # (type, reason, message)
    failure: str | None = None                  # "training" | "verification" when a version just failed


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
                   objects.build_training_job(model, colocate=obs.colocate)]
    # A Job created in this pass counts as running, so the next pass reports the same.
    t_state, t_reason, t_msg = job_state(obs.train_job) if obs.train_job else ("running", "Running", "running")
    v_state, v_reason, v_msg = "pending", "Pending", "waiting for training"
    # S3 object versions of what the trainer uploaded (s3:// stores): every later download is pinned to them
    uploaded_ids = {k: v for k, v in ((obs.train_message or {}).get("versionIds") or {}).items() if v} or None
    if t_state == "succeeded":
        if obs.verify_job is None:
            ensure.append(objects.build_verify_job(model, version_ids=uploaded_ids, colocate=obs.colocate))
        v_state, v_reason, v_msg = job_state(obs.verify_job) if obs.verify_job else ("running", "Running", "running")
    vm = obs.verify_message or {}
    verified = v_state in ("succeeded", "failed") and vm.get("verified") is True
    gates_passed = vm.get("gatesPassed") if verified else None
    rollout = v_state == "succeeded" and verified and gates_passed is True
    warn_rollout = (spec.signing.mode == "Warn" and v_state == "failed" and verified and gates_passed is False)

    dep = obs.deployment
    dep_ann = (dep or {}).get("metadata", {}).get("annotations") or {}
    dep_ids = _json_or_none(dep_ann.get(objects.VERSION_IDS_ANNOTATION))
    dep_prov = _json_or_none(dep_ann.get(objects.PROVENANCE_ANNOTATION))
    if rollout or warn_rollout:
        # the trainer's report, or (its pod gone) what the Deployment already pins for this version
        target = (vm["digest"], version, uploaded_ids or (dep_ids if dep_ann.get("hardened.dev/version") == version
                                                          else None), vm.get("provenance") or None)
    elif dep is not None and dep_ann.get("hardened.dev/digest"):
        target = (dep_ann["hardened.dev/digest"], dep_ann.get("hardened.dev/version", version), dep_ids, dep_prov)
    else:
        target = None
    desired_dep = None
    if target:
        desired_dep = objects.build_deployment(model, digest=target[0], version=target[1], version_ids=target[2],
                                               colocate=obs.colocate, provenance=target[3])
        ensure += [objects.build_serving_configmap(model), desired_dep,
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
    train_cond = {"running": ("Unknown", "Training", f"training Job {n.train} is running"),
                  "succeeded": ("True", "Succeeded", f"training Job {n.train} completed"),
                  "failed": ("False", "TrainingFailed" if t_reason in ("Failed", "BackoffLimitExceeded") else t_reason,
                             f"training Job {n.train} failed ({t_reason}): {tm.get('message') or t_msg}")}[t_state]
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
    ready_dep, ready_replicas = rollout_complete(dep, desired_dep, spec.serving.replicas)
    serving_current = target is not None and target[1] == version
    problems = pod_problems(obs.serving_pods) if target and not ready_dep else []
    keeps = f"; {ready_replicas} ready pod(s) of the previous rollout keep serving" if ready_replicas else ""
    if target is None:
        serve_cond = ("False", "NotDeployed", "no verified version yet")
    elif ready_dep:
        serve_cond = ("True", "Ready", f"{ready_replicas}/{spec.serving.replicas} replicas serving version "
                                       f"{target[1]} (digest {target[0][:16]})")
    elif problems:
        serve_cond = ("False", problems[0][0], f"{ready_replicas}/{spec.serving.replicas} replicas ready; "
                                               f"{problems[0][1]}" + keeps)
    else:
        serve_cond = ("False", "RollingOut", f"{ready_replicas}/{spec.serving.replicas} replicas ready")
    prev_serving = next((c for c in (previous or {}).get("conditions") or [] if c.get("type") == "ServingReady"), {})
    if problems and prev_serving.get("reason") != serve_cond[1]:
        events.append(("Warning", serve_cond[1], serve_cond[2]))

    stuck = _rollout_stuck(dep, serving_digest) if not ready_dep else None
    failed_stage = None
    if problems and problems[0][0] == "ArtifactRefused":
        # The new pods' init container refuses the bytes it would load (changed after verification, or signed by
        # someone else): waiting cannot help. The rollout budget keeps the previous pods serving meanwhile.
        failed_stage, phase, why = "rollout", "Failed", serve_cond
    elif stuck:
        # The new pods never became ready before the Deployment's progress deadline: the init container
        # refused the artifact (changed after verification) or the server crashed. The rollout budget keeps the
        # previous pods serving; the operator says so and does not retry a version that cannot start.
        failed_stage, phase = "rollout", "Failed"
        why = ("False", "RolloutStuck", f"Deployment {n.serving} did not progress ({stuck}); the pods of the "
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
    # rounded for display (`kubectl get hm` prints status as stored); the signed metrics.json keeps every digit
    metrics = {k: round(vm["metrics"][k], 4) for k in STATUS_METRICS
               if vm.get("metrics", {}).get(k) is not None} if verified and vm.get("metrics") else None
    uri, _ = objects.version_location(model)
    status = build_status(
        previous, generation=gen, phase=phase, now=now,
        conditions={"TrainingSucceeded": train_cond, "SignatureVerified": sig_cond, "GatesPassed": gate_cond,
                    "ServingReady": serve_cond, "Ready": ready},
        training={"jobName": n.train, "configDigest": version,
                  "startTime": ((obs.train_job or {}).get("status") or {}).get("startTime"),
                  "completionTime": ((obs.train_job or {}).get("status") or {}).get("completionTime"),
                  "imageID": obs.train_image_id, "dataDigest": tm.get("dataDigest")},
        metrics=metrics or None,
        artifact={k: v for k, v in {"uri": uri, "digest": vm.get("digest") if verified else None,
                                    "signer": vm.get("signer") if verified else None,
                                    "versionId": _signature_version_id(uploaded_ids) if verified else None,
                                    **((vm.get("provenance") or {}) if verified else {})}.items()
                  if v},
        serving={k: v for k, v in {"url": f"{'https' if model.spec.serving.tls else 'http'}://"
                                          f"{model.metadata.name}.{model.metadata.namespace}.svc",
                                   "readyReplicas": ready_replicas, "servedDigest": serving_digest,
                                   "dataDigest": (target[3] or {}).get("dataDigest"),
                                   "trainerImageDigest": (target[3] or {}).get("trainerImageDigest")
                                   or (target[3] or {}).get("trainerImage")}.items()
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
    from .kube import container_image_id, job_pods, termination_message

    ns, n = model.metadata.namespace, objects.names(model)
    obs = Observed(train_job=kube.get("Job", ns, n.train), verify_job=kube.get("Job", ns, n.verify),
                   deployment=kube.get("Deployment", ns, n.serving),
                   monitoring_crds=kube.crd_exists("prometheusrules.monitoring.coreos.com"))
    if obs.deployment is not None:  # why pods are not ready: the Deployment alone only counts them
        obs.serving_pods = kube.list("Pod", ns, objects.serving_selector(model))
    if obs.train_job is not None and job_state(obs.train_job)[0] in ("succeeded", "failed"):
        pods = job_pods(kube, ns, n.train)  # one list for the trainer's message and its image
        obs.train_message = termination_message(pods)
        obs.train_image_id = container_image_id(pods, "trainer")
    if obs.verify_job is not None and job_state(obs.verify_job)[0] in ("succeeded", "failed"):
        obs.verify_message = termination_message(job_pods(kube, ns, n.verify))
    return obs


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
    missing, pvc = ensure_prerequisites(kube, model)
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
    obs = observe(kube, model)
    obs.colocate = needs_colocation(pvc)
    decision = decide(model, obs, previous, now=now())
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
