"""kopf handlers: the only module with decorators. Each hands off to reconcile.handle_model.

Absolute imports: kopf may load this file by path (`kopf run handlers.py`).
"""
import os

import kopf

from hardened_operator.spec import API_GROUP, API_VERSION, PLURAL

INTERVAL = float(os.environ.get("HARDENED_RECONCILE_INTERVAL", "10"))
METRICS_PORT = int(os.environ.get("HARDENED_METRICS_PORT", "0") or 0)


@kopf.on.login()
def login(**kwargs):
    return kopf.login_via_client(**kwargs)  # in-cluster service account, else kubeconfig


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_):
    import kubernetes

    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="hardened.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="hardened.dev")
    settings.posting.level = 20  # INFO and above become Events
    settings.watching.server_timeout = 300
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    if METRICS_PORT:
        from prometheus_client import start_http_server

        start_http_server(METRICS_PORT)


def _reconcile(body, patch, logger):
    from hardened_operator.kube import Kube
    from hardened_operator.operator_metrics import METRICS
    from hardened_operator.reconcile import handle_model

    def event(type_, reason, message):
        (kopf.warn if type_ == "Warning" else kopf.info)(dict(body), reason=reason, message=message)
        logger.info(f"{reason}: {message}")

    with METRICS.duration.time():
        try:
            return handle_model(dict(body), kube=Kube(), patch=patch, event=event, metrics=METRICS)
        except (kopf.PermanentError, kopf.TemporaryError):
            raise
        except Exception as exc:
            METRICS.errors.labels(type(exc).__name__).inc()
            raise kopf.TemporaryError(f"{type(exc).__name__}: {exc}", delay=15) from exc


@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
@kopf.on.update(API_GROUP, API_VERSION, PLURAL, field="spec")
def on_change(body, patch, logger, **_):
    _reconcile(body, patch, logger)


@kopf.timer(API_GROUP, API_VERSION, PLURAL, interval=INTERVAL, initial_delay=INTERVAL)
def periodic(body, patch, logger, **_):
    _reconcile(body, patch, logger)
