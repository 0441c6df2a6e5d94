"""Every object the operator would create for a spec, in apply order (`hardened-model render`)."""
from __future__ import annotations

from hardened_model.spec import HardenedModel
from .jobs import (build_training_configmap, build_training_job, build_training_peers_policy, build_training_service,
                   build_verify_job)
from .monitoring import build_prometheus_rule, build_service_monitor
from .objects import (build_deployment, build_jobs_network_policy, build_metrics_service, build_network_policy,
                      build_pdb, build_service, build_serving_configmap, names)

# The Deployment pins the digest of a *verified* artifact, known only after the
# verification Job; render shows where it goes.
UNVERIFIED = "digest-of-the-verified-artifact"


def build_all(model: HardenedModel, *, digest: str = UNVERIFIED, monitoring_crds: bool = True) -> list[dict]:
    peers = [o for o in (build_training_peers_policy(model), build_training_service(model)) if o]
    objs = [build_jobs_network_policy(model), build_training_configmap(model), *peers, build_training_job(model),
            build_verify_job(model), build_serving_configmap(model),
            build_deployment(model, digest=digest, version=names(model).version),
            build_service(model), build_metrics_service(model), build_network_policy(model), build_pdb(model)]
    m = model.spec.monitoring
    if monitoring_crds and m.service_monitor:
        objs.append(build_service_monitor(model))
    if monitoring_crds and m.prometheus_rule:
        objs.append(build_prometheus_rule(model))
    return objs
