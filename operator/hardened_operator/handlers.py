"""kopf handlers: the only module with decorators. Each hands off to reconcile.handle_model.

Event-driven, no timer: kopf puts a finalizer on every resource with a timer or
daemon, and a HardenedModel has no external state to clean up (children go
with their ownerReferences), so deletion must not wait on the operator.
Spec changes and restarts arrive as create/update/resume; progress of the
children arrives as events on our own Jobs and Deployments, which reconcile
their owner. A missing Secret is retried by kopf (TemporaryError). A change to
a HardenedModelPolicy re-runs the models it concerns (on_policy).

Absolute imports: kopf may load this file by path (`kopf run handlers.py`).
"""
import asyncio
import collections
import contextvars
import os
import threading

import kopf

from hardened_operator.manifests.objects import MANAGED_BY
from hardened_model.policy import POLICY_PLURAL
from hardened_model.spec import API_GROUP, API_VERSION, PLURAL

METRICS_PORT = int(os.environ.get("HARDENED_METRICS_PORT", "0") or 0)
OURS = {"app.kubernetes.io/managed-by": MANAGED_BY}
# One pass at a time per model: a pass reads the status the previous one wrote.
_LOCKS: dict = collections.defaultdict(threading.Lock)


@kopf.on.login()
def login(**kwargs):
    return kopf.login_via_client(**kwargs)  # in-cluster service account, else kubeconfig


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, logger, **_):
    from hardened_operator import peering
    from hardened_operator.kube import load_config
    from hardened_operator.countersigning import platform_key
    from hardened_operator.reconcile import verifier_image

    try:  # a bad verifier image or platform key stops the operator at start, not each model at its verify Job
        logger.info(f"Verifier image: {verifier_image()}")
        key = platform_key()
        logger.info(f"Platform countersignature: key {key.keyid}" if key else "Platform countersignature: off")
    except ValueError as exc:
        raise kopf.PermanentError(str(exc)) from exc
    if peering.CHOSEN is not None:
        logger.info(f"Peering: {peering.CHOSEN.note}")

    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="hardened.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="hardened.dev")
    settings.posting.level = 20  # INFO and above become Events
    settings.watching.server_timeout = 300
    # HA mode: a replica that dies without stopping is replaced once its alive-record expires; kopf renews it
    # 5-10 s before that (one PATCH per replica every ~20-25 s instead of ~50-55 s with kopf's 60 s default)
    settings.peering.lifetime = peering.LIFETIME_SECONDS
    load_config()
    _CLIENT.clear()  # made on the first pass, from the configuration just loaded
    if METRICS_PORT:
        from prometheus_client import start_http_server

        start_http_server(METRICS_PORT)


_CLIENT: list = []


def _api_client():
    """One kubernetes ApiClient for every pass: its urllib3 pool (thread-safe) keeps connections alive, where
    a client per pass opened a new TLS connection per pass."""
    import kubernetes

    if not _CLIENT:
        _CLIENT.append(kubernetes.client.ApiClient())
    return _CLIENT[0]


class _StatusPatch:
    """Collects handle_model's status changes; written by the funnel inside the model's lock."""

    def __init__(self):
        self.status = {}


def _reconcile(namespace, name, logger):
    """One pass for one model, serialised, on the latest stored object; status written before unlocking."""
    from hardened_operator.kube import Kube
    from hardened_operator.operator_metrics import METRICS
    from hardened_operator.reconcile import handle_model, retry_seconds

    def transient(exc: Exception, what: str = "") -> kopf.TemporaryError:
        """An API error (409/5xx, a dropped connection) is transient: kopf retries the whole pass, which
        re-reads everything."""
        METRICS.errors.labels(type(exc).__name__).inc()
        return kopf.TemporaryError(f"{what}{type(exc).__name__}: {exc}", delay=retry_seconds(15))

    kube = Kube(_api_client())
    with _LOCKS[namespace, name], METRICS.duration.time():
        try:
            body = kube.get("HardenedModel", namespace, name)
        except Exception as exc:
            raise transient(exc, "reading the model: ") from exc
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return None

        def event(type_, reason, message):
            (kopf.warn if type_ == "Warning" else kopf.info)(body, reason=reason, message=message)
            logger.info(f"{reason}: {message}")

        patch = _StatusPatch()
        try:
            return handle_model(body, kube=kube, patch=patch, event=event, metrics=METRICS)
        except (kopf.PermanentError, kopf.TemporaryError):
            raise
        except Exception as exc:
            raise transient(exc) from exc
        finally:  # what the pass decided, also when it stopped early; a failed write is retried like the rest
            if patch.status:
                try:
                    kube.patch_status("HardenedModel", namespace, name, patch.status)
                except Exception as exc:
                    raise transient(exc, "writing status: ") from exc


@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
@kopf.on.update(API_GROUP, API_VERSION, PLURAL, field="spec")
def on_change(namespace, name, logger, **_):
    _reconcile(namespace, name, logger)


@kopf.on.event("batch", "v1", "jobs", labels=OURS)
@kopf.on.event("apps", "v1", "deployments", labels=OURS)
@kopf.on.event("", "v1", "pods", labels=OURS)  # a serving pod refusing its artifact changes no Deployment field
async def on_child(body, logger, **_):
    meta = body.get("metadata") or {}
    owner = (meta.get("labels") or {}).get("hardened.dev/model")
    if owner:
        await _child_pass(meta.get("namespace"), owner, logger)


# (namespace, name) -> the pending retry of a pass that a child's event started and that failed transiently
_RETRIES: dict = {}


async def _child_pass(namespace: str, name: str, logger) -> None:
    """A pass started by a child's event. kopf retries only the model's own handlers, and those may have
    succeeded long ago: a pass that fails here (the API server refused the new Deployment, issue 14) is
    retried here, after the delay it asked for, until one succeeds. The pass runs in a worker thread with a
    copy of this context (kopf's Event queue lives in it), as kopf runs its own synchronous handlers."""
    loop = asyncio.get_running_loop()
    pending = _RETRIES.pop((namespace, name), None)
    if pending is not None:
        pending.cancel()
    try:
        await loop.run_in_executor(None, contextvars.copy_context().run, _reconcile, namespace, name, logger)
    except kopf.TemporaryError as exc:
        logger.info(f"{name}: {exc}; retrying in {exc.delay:.0f}s")
        _RETRIES[namespace, name] = loop.call_later(
            exc.delay or 0, lambda: asyncio.ensure_future(_child_pass(namespace, name, logger)))
    except kopf.PermanentError as exc:
        logger.info(f"{name}: {exc}")  # an invalid spec: the model's own handler reported it


@kopf.index(API_GROUP, API_VERSION, PLURAL)
def hardened_models(namespace, name, status, **_):
    """namespace -> (model, the policies its last pass found governing it), kept by kopf from its watch, for
    on_policy. Only the models this operator watches (--namespace) are in it."""
    from hardened_operator.status import governing_policies

    return {namespace: (name, frozenset(governing_policies(status)))}


@kopf.on.event(API_GROUP, API_VERSION, POLICY_PLURAL)
async def on_policy(type, body, logger, hardened_models: kopf.Index, **_):
    """A HardenedModelPolicy created, changed or deleted: a pass for each model in a namespace it selects, or
    that it governed (a selector narrowed or the policy deleted: their refusal must lift), without waiting for
    the model or a child to change. An Event handler, not on.update: kopf would keep its diff base in an
    annotation on the policy, an admin's object the operator must not write to, and the new object alone is
    enough here. A timer or daemon on every model would put a finalizer on it (see the module's docstring).
    The first listing at start (type None) runs nothing: every model is resumed then anyway."""
    if type is None:
        return
    from hardened_operator.kube import Kube
    from hardened_operator.policies import models_a_policy_concerns

    models = {ns: list(store) for ns, store in hardened_models.items()}
    loop = asyncio.get_running_loop()
    concerned = await loop.run_in_executor(None, models_a_policy_concerns, Kube(_api_client()), body, models)
    if concerned:
        logger.info(f"{len(concerned)} HardenedModel(s) to check again after this {type} event")
    await asyncio.gather(*(_child_pass(ns, name, logger) for ns, name in concerned))
