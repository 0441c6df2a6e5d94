"""The training and verification Jobs of a model version (split from objects.py, which keeps the names,
pod security, volumes and the serving objects these share).

A Job is created once, when missing: its name carries the training version, so a retry or a restarted
operator finds the Job it made. Its pods run under the "restricted" Pod Security Standard (objects).
"""
from __future__ import annotations

import json

from hardened_model.contracts import build_trainer_config
from hardened_model.spec import HardenedModel, to_wire
from . import commands
from .objects import (CONTAINER_SECURITY, DEFAULT_VERIFIER_IMAGE, POD_SECURITY, SIGNING_MOUNT, SIGSTORE_TRUST_MOUNT,
                      TRAINER_COMMAND, TRAINER_CONFIG_MOUNT, _aws_env, _colocated, _meta, _program, _resources,
                      _sigstore_trust, _store_volume, _verify_container, _weights_volume, cluster_layout, labels,
                      names, scratch_volume, signing_secret_name, version_location)

TORCHRUN_COMMAND = ["python", "-m", commands.TORCHRUN]  # the trainer image's Python, launching the ranks


# --------------------------------------------------------------- training
def build_training_configmap(model: HardenedModel) -> dict:
    s = model.spec
    _, local = version_location(model)
    key_ref = s.signing.private_key_secret
    config = build_trainer_config(
        model, output_dir=local or "/work/artifact",
        private_key_path=f"{SIGNING_MOUNT}/{key_ref.key if key_ref else 'private.pem'}"
        if s.signing.method == "key" else None,
        identity_token_path="/var/run/secrets/sigstore/token" if s.signing.method == "keyless" else None,
        trust_config_path=cluster_layout(model).trust_config if _sigstore_trust(model) else None,
        volumes=_weights_volume(model)[2])
    n = names(model)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(model, n.train, "training"),
            "data": {"train.json": json.dumps(config, indent=2, sort_keys=True)}}


def build_training_job(model: HardenedModel, *, colocate: bool = False) -> dict:
    """``colocate``: the pvc:// store is ReadWriteOnce (see _colocated)."""
    s, n = model.spec, names(model)
    t = s.training
    volumes = [{"name": "config", "configMap": {"name": n.train}},
               {"name": "work", "emptyDir": {}}, scratch_volume(t.resources)]
    mounts = [{"name": "config", "mountPath": TRAINER_CONFIG_MOUNT, "readOnly": True},
              {"name": "work", "mountPath": "/work"}, {"name": "tmp", "mountPath": "/tmp"}]
    if s.signing.method == "key":
        key = s.signing.private_key_secret
        volumes.append({"name": "signing", "secret": {"secretName": signing_secret_name(model), "defaultMode": 0o400,
                                                      "items": [{"key": key.key if key else "private.pem",
                                                                 "path": key.key if key else "private.pem"}]}})
        mounts.append({"name": "signing", "mountPath": SIGNING_MOUNT, "readOnly": True})
    elif s.signing.method == "keyless":  # a projected service-account token with audience "sigstore"
        volumes.append({"name": "sigstore-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": "sigstore", "expirationSeconds": 3600, "path": "token"}}]}})
        mounts.append({"name": "sigstore-token", "mountPath": "/var/run/secrets/sigstore", "readOnly": True})
        if _sigstore_trust(model):
            volumes.append(_sigstore_trust(model))
            mounts.append({"name": "sigstore-trust", "mountPath": SIGSTORE_TRUST_MOUNT, "readOnly": True})
    store_volumes, store_mounts = _store_volume(model, read_only=False)
    weight_volumes, weight_mounts, _ = _weights_volume(model)
    volumes += store_volumes + weight_volumes
    mounts += store_mounts + weight_mounts
    layout = cluster_layout(model)
    shape = commands.world(model)
    env = []
    if shape and shape[0] > 1:  # the node rank: the Job controller's completion index of this pod
        env.append({"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}})
    if shape and shape[1] > 1 and t.resources.gpus:
        # NCCL moves tensors between the pod's GPUs through /dev/shm, which the runtime caps at 64 MiB
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    pod = {
        "restartPolicy": "Never",
        "securityContext": POD_SECURITY,
        "automountServiceAccountToken": False,
        "containers": [{
            "name": "trainer",
            "image": t.image,
            **_program(commands.trainer(model, layout), list(TORCHRUN_COMMAND if shape else TRAINER_COMMAND)),
            # the image reference and the pod name go into the signed provenance (the Downward API cannot
            # expose the image's digest: give the image by digest, repo@sha256:..., to have it recorded)
            "env": [{"name": "HOME", "value": "/tmp"}, {"name": "MPLCONFIGDIR", "value": "/tmp"},
                    {"name": "HARDENED_TRAINER_IMAGE", "value": t.image},
                    {"name": "HARDENED_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    *env, *_aws_env(model)],
            "resources": _resources(t.resources, gpu=True),
            "securityContext": CONTAINER_SECURITY,
            "volumeMounts": mounts,
            "terminationMessagePolicy": "File",
        }],
        "volumes": volumes,
    }
    if t.node_selector:
        pod["nodeSelector"] = dict(t.node_selector)
    if t.tolerations:
        pod["tolerations"] = [to_wire(tol) for tol in t.tolerations]
    if s.aws.service_account_name:
        # IRSA: the EKS pod identity webhook injects its own projected token (audience sts.amazonaws.com), so
        # the API-server token stays unmounted: a compromised trainer cannot call the Kubernetes API.
        pod["serviceAccountName"] = s.aws.service_account_name
    pod_labels = labels(model, "training")
    _colocated(model, pod, pod_labels, colocate)
    spec = {"backoffLimit": t.backoff_limit, "activeDeadlineSeconds": t.active_deadline_seconds,
            "template": {"metadata": {"labels": pod_labels}, "spec": pod}}
    if shape and shape[0] > 1:
        # One pod per node, each knowing its rank (Indexed), reachable as <job>-<index>.<job> (subdomain of the
        # headless Service). A rank that exits non-zero fails the whole run at once, the Job controller then
        # removes the other pods (no rank left hanging in a collective); the Job's message names the pod.
        pod["subdomain"] = n.train
        spec.update(completionMode="Indexed", completions=shape[0], parallelism=shape[0],
                    podFailurePolicy={"rules": [{"action": "FailJob", "onExitCodes": {
                        "containerName": "trainer", "operator": "NotIn", "values": [0]}}]})
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": _meta(model, n.train, "training", annotations={"hardened.dev/version": n.version}),
            "spec": spec}


def build_training_peers_policy(model: HardenedModel) -> dict | None:
    """A training run over several pods (None otherwise): its pods may reach each other on any port (the
    rendezvous on 29500; gloo and NCCL pick their own ports) and no one else. A policy of its own, selecting
    the model's training pods only, so the verification pods stay closed (NetworkPolicies add up)."""
    shape = commands.world(model)
    if not shape or shape[0] == 1:
        return None
    peers = [{"podSelector": {"matchLabels": labels(model, "training")}}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": _meta(model, f"{model.metadata.name}-training-peers", "training"),
            "spec": {"podSelector": {"matchLabels": labels(model, "training")}, "policyTypes": ["Ingress", "Egress"],
                     "ingress": [{"from": peers}], "egress": [{"to": peers}]}}


def build_training_service(model: HardenedModel) -> dict | None:
    """The headless Service of a training run over several pods (None otherwise): its name is the Job's and
    the pods' subdomain, so node 0 resolves as <job>-0.<job> before any pod is Ready (publishNotReadyAddresses:
    a training pod has no readiness probe, and the rendezvous happens while the pods start)."""
    shape = commands.world(model)
    if not shape or shape[0] == 1:
        return None
    n = names(model)
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _meta(model, n.train, "training", annotations={"hardened.dev/version": n.version}),
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                     "selector": {"batch.kubernetes.io/job-name": n.train},
                     "ports": [{"name": "rendezvous", "port": commands.RENDEZVOUS_PORT,
                                "targetPort": commands.RENDEZVOUS_PORT}]}}



# ----------------------------------------------------------- verification
def build_verify_job(model: HardenedModel, *, version_ids: dict[str, str] | None = None,
                     colocate: bool = False, verifier_image: str = DEFAULT_VERIFIER_IMAGE,
                     observed_trainer: dict[str, str] | None = None,
                     trusted_keys: tuple[str, ...] | None = None) -> dict:
    """``version_ids``: the S3 object versions the trainer reported (s3:// stores), to pin the download;
    ``colocate``: the pvc:// store is ReadWriteOnce (see _colocated); ``verifier_image``: see _verify_container;
    ``observed_trainer``: {"image", "imageID"} of the training pod's trainer container (kube.container_image);
    ``trusted_keys``: a HardenedModelPolicy's trust.publicKeys (commands.verify)."""
    n = names(model)
    container, volumes = _verify_container(model, digest=None, version_ids=version_ids,
                                           verifier_image=verifier_image, observed_trainer=observed_trainer,
                                           trusted_keys=trusted_keys)
    volumes = volumes + [{"name": "tmp", "emptyDir": {}}, {"name": "models", "emptyDir": {}}]
    pod = {"restartPolicy": "Never", "securityContext": POD_SECURITY, "automountServiceAccountToken": False,
           "containers": [container], "volumes": volumes}
    if model.spec.aws.service_account_name:
        pod["serviceAccountName"] = model.spec.aws.service_account_name  # IRSA token: see build_training_job
    pod_labels = labels(model, "verification")
    _colocated(model, pod, pod_labels, colocate)
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": _meta(model, n.verify, "verification", annotations={"hardened.dev/version": n.version}),
            "spec": {"backoffLimit": 0, "activeDeadlineSeconds": 600,
                     "template": {"metadata": {"labels": pod_labels}, "spec": pod}}}
