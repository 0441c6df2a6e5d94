"""Pure builders for every object the operator creates: spec -> dict.

Names derive from the model's name and its training version, so a retry or a
restarted operator finds the object it made instead of making a second one.
Every pod runs under the Kubernetes "restricted" Pod Security Standard.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from hardened_model.artifacts import StoreURI
from hardened_model.spec import API_GROUP, API_VERSION, KIND, HardenedModel
from hardened_model.contracts import build_serving_config, training_version
from .. import __version__
from . import commands
from .commands import Countersignature, Layout

MANAGED_BY = "hardened-model-operator"
TRAINER_CONFIG_MOUNT = "/etc/hardened/train"
SIGNING_MOUNT = "/var/run/secrets/hardened/signing"
TRUST_MOUNT = "/var/run/secrets/hardened/trust"
SIGSTORE_TRUST_MOUNT = "/var/run/hardened/sigstore-trust"   # signing.keyless.trustConfig (a private Sigstore)
SERVING_CONFIG_MOUNT = "/etc/hardened/serving"
API_KEYS_MOUNT = "/var/run/secrets/hardened/api-keys"
TLS_MOUNT = "/var/run/secrets/hardened/tls"
# The serving image holds the core and hardened_server only (no hardened-model CLI): its pods run this
SERVER_COMMAND = ["python", "-m", "hardened_server"]
# The verifier the verify Job and the serving pods' verify-model init container run unless the operator is
# configured with another (HARDENED_VERIFIER_IMAGE, the chart's verifier.image): the server image of this
# release, which carries `python -m hardened_server verify`. Never spec.serving.image: the program that decides
# whether a signature holds is the platform's, not the tenant's (issue 27).
DEFAULT_VERIFIER_IMAGE = f"ghcr.io/hardened-model/server:{__version__}"
TRAINER_COMMAND = ["python", "-m", "hardened_trainer"]
CLIENT_CA_MOUNT = "/var/run/secrets/hardened/client-ca"
JWKS_MOUNT = "/var/run/secrets/hardened/jwks"
ARTIFACTS_MOUNT = "/artifacts"
MODELS_MOUNT = "/models"
VERSION_IDS_ANNOTATION = "hardened.dev/s3-version-ids"
# The model server verifies and loads the weights before it listens: the startup probe allows this long
# (a multi-GB model from a slow volume) before liveness may restart it.
MODEL_STARTUP_SECONDS = 600
DNS_EGRESS = {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
PORTS = {"model": 8080, "validation": 8081, "ratelimit": 8443,
         "model-metrics": 9090, "validation-metrics": 9091, "ratelimit-metrics": 9092}


# ------------------------------------------------------------------ names
@dataclass(frozen=True)
class Names:
    """The names of one model's children; the Jobs' names carry the training version."""

    train: str
    verify: str
    serving: str
    serving_config: str
    signing_secret: str
    api_keys_secret: str
    version: str
    record: str  # the version's durable record (records.py)


def names(model: HardenedModel) -> Names:
    n, v = model.metadata.name, training_version(model.spec)
    return Names(train=f"{n}-train-{v}", verify=f"{n}-verify-{v}", serving=n, serving_config=f"{n}-serving",
                 signing_secret=f"{n}-signing", api_keys_secret=f"{n}-api-keys", version=v,
                 record=f"{n}-version-{v}")


def labels(model: HardenedModel, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "hardened-model", "app.kubernetes.io/instance": model.metadata.name,
            "app.kubernetes.io/component": component, "app.kubernetes.io/managed-by": MANAGED_BY,
            "hardened.dev/model": model.metadata.name}


def serving_selector(model: HardenedModel) -> dict[str, str]:
    """The labels that select a model's serving pods (Deployment, Service, PDB, NetworkPolicy)."""
    return {"hardened.dev/model": model.metadata.name, "app.kubernetes.io/component": "serving"}


def owner_reference(model: HardenedModel) -> dict:
    return {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "name": model.metadata.name,
            "uid": model.metadata.uid or "", "controller": True, "blockOwnerDeletion": True}


def _meta(model: HardenedModel, name: str, component: str, **extra) -> dict:
    meta = {"name": name, "namespace": model.metadata.namespace, "labels": labels(model, component),
            "ownerReferences": [owner_reference(model)]}
    meta.update(extra)
    return meta


# --------------------------------------------------------- pod security
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                      "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def _resources(r, *, gpu: bool) -> dict:
    requests = {"cpu": str(r.cpu), "memory": str(r.memory)}
    limits = {"memory": str(r.memory)}
    if gpu and r.gpus:
        requests["nvidia.com/gpu"] = str(r.gpus)
        limits["nvidia.com/gpu"] = str(r.gpus)
    if r.scratch is not None:  # the /tmp emptyDir's room (scratch_volume caps the volume to it)
        requests["ephemeral-storage"] = limits["ephemeral-storage"] = str(r.scratch)
    return {"requests": requests, "limits": limits}


def scratch_volume(r) -> dict:
    """The pod's /tmp emptyDir, capped at ``r.scratch`` (Resources) when it is set."""
    return {"name": "tmp", "emptyDir": {"sizeLimit": str(r.scratch)} if r.scratch is not None else {}}


def _aws_env(model: HardenedModel) -> list[dict]:
    region = model.spec.artifacts.region or model.spec.aws.region
    return [{"name": "AWS_REGION", "value": region}, {"name": "AWS_DEFAULT_REGION", "value": region}] if region else []


STORE_LABEL = "hardened.dev/store"


def _colocated(model: HardenedModel, pod: dict, pod_labels: dict, colocate: bool) -> None:
    """For a ReadWriteOnce pvc:// store (one node may attach it at a time, e.g. EBS): every pod that mounts the
    claim carries its name as a label and must run where the others run. The first such pod may go anywhere
    (the scheduler lets a pod that matches its own affinity term start a group); the rest follow it, instead
    of waiting on a Multi-Attach error (issue 14). S3 or ReadWriteMany stores need none of this."""
    if not colocate:
        return
    claim = StoreURI.parse(model.spec.artifacts.store).bucket
    pod_labels[STORE_LABEL] = claim
    pod["affinity"] = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": {"matchLabels": {STORE_LABEL: claim}}, "topologyKey": "kubernetes.io/hostname"}]}}


def _store_volume(model: HardenedModel, *, read_only: bool) -> tuple[list[dict], list[dict]]:
    """(volumes, mounts) for a pvc:// store; s3:// needs none (IRSA credentials, emptyDir work space)."""
    store = StoreURI.parse(model.spec.artifacts.store)
    if store.scheme != "pvc":
        return [], []
    return ([{"name": "artifacts", "persistentVolumeClaim": {"claimName": store.bucket, "readOnly": read_only}}],
            [{"name": "artifacts", "mountPath": ARTIFACTS_MOUNT, "readOnly": read_only}])


def _weights_volume(model: HardenedModel) -> tuple[list[dict], list[dict], dict[str, str]]:
    """(volumes, mounts, claim -> mount path) for a pvc:// model.initialWeights. The store's own claim is
    mounted already (at ARTIFACTS_MOUNT); another claim is mounted read-only under /volumes."""
    iw = model.spec.model.initial_weights
    if iw is None or not iw.uri.startswith("pvc://"):
        return [], [], {}
    claim = iw.uri[len("pvc://"):].split("/", 1)[0]
    store = StoreURI.parse(model.spec.artifacts.store)
    if store.scheme == "pvc" and store.bucket == claim:
        return [], [], {claim: ARTIFACTS_MOUNT}
    path = f"/volumes/{claim}"
    return ([{"name": "initial-weights", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}],
            [{"name": "initial-weights", "mountPath": path, "readOnly": True}], {claim: path})


def version_location(model: HardenedModel, version: str | None = None) -> tuple[str, str | None]:
    """(URI of a version, its path inside a pod for pvc:// stores); default: the spec's training version."""
    store = StoreURI.parse(model.spec.artifacts.store)
    version = version or training_version(model.spec)
    uri = store.version_uri(model.metadata.name, version)
    if store.scheme == "pvc":
        return uri, str(store.local_path(model.metadata.name, version, mount=ARTIFACTS_MOUNT))
    return uri, None


def cluster_layout(model: HardenedModel, version: str | None = None) -> Layout:
    """Where the pods' processes find things (the mounts below) and listen (PORTS), for one version (default:
    the spec's training version). A pvc:// version is read in place; an s3:// one is downloaded into the
    ``models`` emptyDir by the verifier first."""
    uri, local = version_location(model, version)
    public = model.spec.signing.public_key_secret
    return Layout(
        server=tuple(SERVER_COMMAND), trainer=tuple(TRAINER_COMMAND),
        trainer_config=f"{TRAINER_CONFIG_MOUNT}/train.json", serving_config=f"{SERVING_CONFIG_MOUNT}/serving.json",
        artifact=local or MODELS_MOUNT, artifact_uri=None if local else uri,
        public_key=f"{TRUST_MOUNT}/{public.key if public else 'public.pem'}",
        trust_config=f"{SIGSTORE_TRUST_MOUNT}/trust_config.json",
        api_keys=f"{API_KEYS_MOUNT}/keys", jwks=f"{JWKS_MOUNT}/jwks.json",
        tls_cert=f"{TLS_MOUNT}/tls.crt", tls_key=f"{TLS_MOUNT}/tls.key", client_ca=f"{CLIENT_CA_MOUNT}/ca.crt",
        trainer_termination_log=None, verify_termination_log="/dev/termination-log",
        # torch's CPU threads follow the container's CPU request (the Downward API rounds it up to whole cores)
        cpu_threads="$(CPU_REQUEST)",
        # pods meet at node 0 of the Indexed Job (jobs.build_training_service: its DNS name), ranked by index
        **_rendezvous(model),
        # beside the version folder on the store's volume: a retried training pod resumes from it
        checkpoint_dir=f"{local}.checkpoint" if local else None,
        # Only the rate-limit sidecar takes traffic from outside the pod; the validation sidecar and the model
        # server listen on 127.0.0.1, so nothing reaches them around the key check. The kubelet probes the pod
        # IP, so every container's admin port (metrics, /healthz, /readyz) listens on all addresses; the
        # NetworkPolicy admits it for scraping only.
        host="127.0.0.1", public_host="0.0.0.0", metrics_host="0.0.0.0",
        model_port=PORTS["model"], model_metrics_port=PORTS["model-metrics"],
        validation_port=PORTS["validation"], validation_metrics_port=PORTS["validation-metrics"],
        ratelimit_port=PORTS["ratelimit"], ratelimit_metrics_port=PORTS["ratelimit-metrics"])


def _rendezvous(model: HardenedModel) -> dict[str, str | None]:
    """Layout.rendezvous_host and node_rank of the spec's training Job: more than one node meets at the Indexed
    Job's pod 0, whose hostname is ``<job>-0`` in the headless Service ``<job>`` (its subdomain)."""
    shape = commands.world(model)
    if shape is None or shape[0] == 1:
        return {"rendezvous_host": None, "node_rank": None}
    job = names(model).train
    return {"rendezvous_host": f"{job}-0.{job}", "node_rank": "$(JOB_COMPLETION_INDEX)"}


def _program(argv: list[str], program: list[str]) -> dict:
    """A container's command (the image's program) and args, from one argv. The server's program is the one
    list SERVER_COMMAND in every container: `render` prints it once, as a YAML anchor."""
    if argv[:len(program)] != program:
        raise ValueError(f"{argv[:len(program)]} is not the image's program {program}")
    return {"command": program, "args": argv[len(program):]}


def signing_secret_name(model: HardenedModel) -> str:
    ref = model.spec.signing.private_key_secret
    return ref.name if ref else names(model).signing_secret


# ----------------------------------------------------------- verification
def _sigstore_trust(model: HardenedModel) -> dict | None:
    """The volume of signing.keyless.trustConfig (a private Sigstore's ClientTrustConfig), if any."""
    s = model.spec.signing
    ref = s.keyless.trust_config if s.method == "keyless" and s.keyless else None
    if ref is None:
        return None
    items = [{"key": ref.key, "path": "trust_config.json"}]
    return {"name": "sigstore-trust", **({"secret": {"secretName": ref.name, "items": items}} if ref.kind == "Secret"
                                         else {"configMap": {"name": ref.name, "items": items}})}


def _trust_volumes(model: HardenedModel, trusted_keys: tuple[str, ...] | None) -> tuple[list[dict], list[dict]]:
    """(volumes, mounts) of what the verifiers trust: the public key, or a private Sigstore's trust config.
    ``trusted_keys``: a HardenedModelPolicy's (commands.verify), or the per-run key of signing.method
    ephemeral, passed inline, so no key Secret is mounted."""
    s = model.spec.signing
    if s.method == "ephemeral" or s.method == "key" and trusted_keys is not None:
        return [], []
    if s.method == "keyless":
        volume = _sigstore_trust(model)
        if volume is None:  # Sigstore's public-good root, bundled with sigstore-python, used offline
            return [], []
        return [volume], [{"name": "sigstore-trust", "mountPath": SIGSTORE_TRUST_MOUNT, "readOnly": True}]
    ref = s.public_key_secret
    key = ref.key if ref else "public.pem"
    secret = ref.name if ref else names(model).signing_secret
    volume = {"name": "trust", "secret": {"secretName": secret, "items": [{"key": key, "path": key}]}}
    return [volume], [{"name": "trust", "mountPath": TRUST_MOUNT, "readOnly": True}]


def _verify_container(model: HardenedModel, *, digest: str | None, verifier_image: str, version: str | None = None,
                      gates: bool = True, version_ids: dict[str, str] | None = None,
                      observed_trainer: dict[str, str] | None = None,
                      countersignature: Countersignature | None = None,
                      trusted_keys: tuple[str, ...] | None = None) -> tuple[dict, list[dict]]:
    """The verification Job's container (``gates``) or the serving pod's init container (``digest``); see
    commands.verify. An s3:// version is downloaded into the ``models`` emptyDir. It runs ``verifier_image``,
    the platform's (DEFAULT_VERIFIER_IMAGE), never spec.serving.image; ``observed_trainer``: commands.verify."""
    layout = cluster_layout(model, version)
    volumes, mounts = _trust_volumes(model, trusted_keys)
    if layout.artifact_uri:
        mounts = mounts + [{"name": "models", "mountPath": MODELS_MOUNT}]
    store_volumes, store_mounts = _store_volume(model, read_only=True)
    argv = commands.verify(model, layout, digest=digest, gates=gates, version_ids=version_ids,
                           observed_trainer=observed_trainer, countersignature=countersignature,
                           trusted_keys=trusted_keys)
    container = {"name": "verify", "image": verifier_image, **_program(argv, SERVER_COMMAND),
                 "env": [{"name": "HOME", "value": "/tmp"}, *_aws_env(model)],
                 "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
                 "securityContext": CONTAINER_SECURITY, "volumeMounts": mounts + store_mounts + [
                     {"name": "tmp", "mountPath": "/tmp"}],
                 "terminationMessagePolicy": "File"}
    return container, volumes + store_volumes


# ---------------------------------------------------------------- serving
def build_serving_configmap(model: HardenedModel) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _meta(model, names(model).serving_config, "serving"),
            "data": {"serving.json": json.dumps(build_serving_config(model), indent=2, sort_keys=True)}}


PROVENANCE_ANNOTATION = "hardened.dev/provenance"
OBSERVED_TRAINER_ANNOTATION = "hardened.dev/observed-trainer"
COUNTERSIGNATURE_ANNOTATION = "hardened.dev/countersignature"  # the platform's DSSE envelope (issue 27)
RUN_KEY_ANNOTATION = "hardened.dev/run-key"  # signing.method ephemeral: the served version's per-run public key


def build_deployment(model: HardenedModel, *, digest: str, version: str,
                     version_ids: dict[str, str] | None = None, colocate: bool = False,
                     provenance: dict | None = None, verifier_image: str = DEFAULT_VERIFIER_IMAGE,
                     observed_trainer: dict[str, str] | None = None,
                     countersignature: Countersignature | None = None,
                     trusted_keys: tuple[str, ...] | None = None, run_key: str | None = None,
                     gates: bool = False) -> dict:
    """The serving Deployment for one verified version (``digest`` pinned in every container, and for s3://
    stores the object ``version_ids`` pinned in the init container's download and kept in an annotation;
    ``colocate``: the pvc:// store is ReadWriteOnce, see _colocated). The init container runs the platform's
    ``verifier_image``; the model server and its sidecars run spec.serving.image. ``observed_trainer``: what
    the kubelet ran for the version's training pod, as its verify Job checked it; the init container checks
    the same; the annotations keep it and the platform's ``countersignature`` for passes after the pods go.
    ``trusted_keys``: a HardenedModelPolicy's trust.publicKeys, which the init container and the model server
    verify with (commands.verify); each pass renders the policies' keys of that moment, so a version signed
    with a key no longer trusted starts no new pod. ``run_key``: signing.method ephemeral's per-run public key,
    the one the pods trust (``trusted_keys`` holds it), kept in an annotation for later passes (runkeys).
    ``gates``: the init container also judges the signed metrics against spec.gates (a version served again)."""
    s, n = model.spec, names(model)
    layout = cluster_layout(model, version)
    local = layout.artifact_uri is None  # a pvc:// version, read in place
    init, volumes = _verify_container(model, digest=digest, version=version, gates=gates, version_ids=version_ids,
                                      verifier_image=verifier_image, observed_trainer=observed_trainer,
                                      countersignature=countersignature, trusted_keys=trusted_keys)
    init = {**init, "name": "verify-model"}
    volumes = volumes + [
        scratch_volume(s.serving.resources), {"name": "models", "emptyDir": {}},
        {"name": "serving-config", "configMap": {"name": n.serving_config}}]
    edge_volumes, edge_mounts = _edge(model)
    volumes += edge_volumes
    # the trust volume's mount is among the init container's
    model_mounts = ([m for m in init["volumeMounts"] if m["name"] in ("artifacts", "trust", "sigstore-trust", "tmp")]
                    + ([{"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True}] if not local else []))
    cfg_mount = {"name": "serving-config", "mountPath": SERVING_CONFIG_MOUNT, "readOnly": True}
    argv = commands.serving(model, layout, digest=digest, trusted_keys=trusted_keys)

    def probe(port: int, path: str, period: int = 5, failures: int = 3) -> dict:
        return {"httpGet": {"path": path, "port": port}, "periodSeconds": period, "timeoutSeconds": 2,
                "failureThreshold": failures}

    def container(name: str, port: int, metrics: int, mounts: list[dict], resources: dict,
                  env: tuple = (), startup_seconds: int = 0) -> dict:
        # Readiness of the rate-limit sidecar is the whole chain's (/v2/health/ready goes through to the model);
        # liveness is always the process's own, so a model that is down does not get its sidecars restarted.
        public = name == "ratelimit"
        out = {"name": name, "image": s.serving.image, **_program(argv[name], SERVER_COMMAND),
               "ports": [{"name": name[:9] if not public else public_port_name(model), "containerPort": port},
                         {"name": f"{name[:5]}-metrics", "containerPort": metrics}],
               "env": [{"name": "HOME", "value": "/tmp"}, *env],
               "resources": resources, "securityContext": CONTAINER_SECURITY, "volumeMounts": mounts,
               # the rate-limit sidecar's /readyz asks the chain behind it (/v2/health/ready), on the plain admin
               # port: the public one may be HTTPS with client certificates, which the kubelet does not have
               "readinessProbe": probe(metrics, "/readyz"),
               "livenessProbe": probe(metrics, "/healthz", 10)}
        if startup_seconds:  # liveness waits until the process listens, however long loading takes
            out["startupProbe"] = probe(metrics, "/healthz", 5, failures=startup_seconds // 5)
        return out

    sidecar_resources = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}
    containers = [
        container("model", layout.model_port, layout.model_metrics_port, model_mounts,
                  _resources(s.serving.resources, gpu=True),
                  # layout.cpu_threads reads it (the Downward API rounds the request up to whole cores)
                  env=({"name": "CPU_REQUEST", "valueFrom": {"resourceFieldRef": {
                      "containerName": "model", "resource": "requests.cpu", "divisor": "1"}}},),
                  startup_seconds=MODEL_STARTUP_SECONDS),
        container("validation", layout.validation_port, layout.validation_metrics_port,
                  [cfg_mount, {"name": "tmp", "mountPath": "/tmp"}] + [m for m in model_mounts if m["name"] != "tmp"],
                  sidecar_resources),
        container("ratelimit", layout.ratelimit_port, layout.ratelimit_metrics_port,
                  [cfg_mount, *edge_mounts, {"name": "tmp", "mountPath": "/tmp"}], sidecar_resources),
    ]
    pod_labels = {**labels(model, "serving"), "hardened.dev/version": version}
    pod = {"securityContext": POD_SECURITY, "automountServiceAccountToken": False,
           "initContainers": [init], "containers": containers, "volumes": volumes,
           "terminationGracePeriodSeconds": 30}
    _colocated(model, pod, pod_labels, colocate)
    if s.aws.service_account_name and not local:
        pod["serviceAccountName"] = s.aws.service_account_name  # IRSA token: see build_training_job
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta(model, n.serving, "serving",
                          # the served version's pins, which a later pass reads back (reconcile.serving_target)
                          annotations={"hardened.dev/digest": digest, "hardened.dev/version": version, **{
                              k: json.dumps(v, sort_keys=True) for k, v in (
                                  (VERSION_IDS_ANNOTATION, version_ids), (PROVENANCE_ANNOTATION, provenance),
                                  (OBSERVED_TRAINER_ANNOTATION, observed_trainer),
                                  (COUNTERSIGNATURE_ANNOTATION, countersignature and countersignature.envelope))
                              if v}, **({RUN_KEY_ANNOTATION: run_key} if run_key else {})}),
        "spec": {
            "replicas": s.serving.replicas,
            "selector": {"matchLabels": serving_selector(model)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": rollout_budget(s.serving.replicas)},
            "template": {"metadata": {"labels": pod_labels,
                                      "annotations": {"hardened.dev/digest": digest,
                                                      "hardened.dev/serving-config": _digest_of(
                                                          build_serving_config(model))}},
                         "spec": pod},
        },
    }


def public_port_name(model: HardenedModel) -> str:
    return "https" if model.spec.serving.tls else "http"


def _edge(model: HardenedModel) -> tuple[list[dict], list[dict]]:
    """Volumes and mounts of the rate-limit sidecar's files (API keys, JWKS, TLS certificate and client CA) at
    cluster_layout's paths. Secrets and ConfigMaps are mounted whole-file (no subPath), so the kubelet's updates
    reach the sidecar, which re-reads them: a renewed certificate or rotated key needs no restart."""
    s = model.spec.serving
    volumes, mounts = [], []

    def mount(name: str, path: str, source: dict) -> None:
        volumes.append({"name": name, **source})
        mounts.append({"name": name, "mountPath": path, "readOnly": True})

    if s.auth.api_keys:
        keys = s.api_keys_secret
        mount("api-keys", API_KEYS_MOUNT, {"secret": {
            "secretName": keys.name if keys else names(model).api_keys_secret,
            "items": [{"key": keys.key if keys else "keys", "path": "keys"}]}})
    if s.auth.jwt:
        ref = s.auth.jwt.jwks
        source = ({"secret": {"secretName": ref.name, "items": [{"key": ref.key, "path": "jwks.json"}]}}
                  if ref.kind == "Secret" else
                  {"configMap": {"name": ref.name, "items": [{"key": ref.key, "path": "jwks.json"}]}})
        mount("jwks", JWKS_MOUNT, source)
    if s.tls:
        mount("tls", TLS_MOUNT, {"secret": {"secretName": s.tls.secret_name, "items": [
            {"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]}})
        if s.tls.client_ca_secret:
            mount("client-ca", CLIENT_CA_MOUNT, {"secret": {"secretName": s.tls.client_ca_secret,
                                                            "items": [{"key": "ca.crt", "path": "ca.crt"}]}})
    return volumes, mounts


def rollout_budget(replicas: int) -> dict:
    """How a new version or serving change rolls out. One replica: a new pod first, the old one stays until
    the new one is ready (a refused artifact never takes the endpoint down). Two or more: also one old pod
    may go at once, so a rollout never waits for room for an extra pod: on a 2-CPU node, two serving pods
    and a surge pod did not fit and every serving change hung (issue 14); at least replicas - 1 keep
    serving, and a refused new version leaves them serving."""
    return {"maxSurge": 1, "maxUnavailable": 0 if replicas == 1 else 1}


def _digest_of(doc: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def build_service(model: HardenedModel) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(model, model.metadata.name, "serving"),
            "spec": {"selector": serving_selector(model),
                     "ports": [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP",
                                "appProtocol": "https"} if model.spec.serving.tls else
                               {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}}


def build_metrics_service(model: HardenedModel) -> dict:
    """Metrics ports for Prometheus only (a separate Service, so the ServiceMonitor selects it)."""
    ports = [{"name": n, "port": PORTS[n], "targetPort": PORTS[n], "protocol": "TCP"}
             for n in ("model-metrics", "validation-metrics", "ratelimit-metrics")]
    meta = _meta(model, f"{model.metadata.name}-metrics", "metrics")
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"selector": serving_selector(model), "ports": ports}}


def build_network_policy(model: HardenedModel) -> dict:
    """Only the rate-limit port from anywhere, metrics ports from the monitoring namespace; egress only to DNS
    and (for s3:// stores, where the init container downloads) HTTPS."""
    s = model.spec
    selector = {"matchLabels": serving_selector(model)}
    egress = [DNS_EGRESS]
    if StoreURI.parse(s.artifacts.store).scheme == "s3":
        egress.append({"ports": [{"protocol": "TCP", "port": 443}]})
    if s.serving.rate_limit.storage.startswith("redis"):
        import urllib.parse

        egress.append({"ports": [{"protocol": "TCP",
                                  "port": urllib.parse.urlsplit(s.serving.rate_limit.storage).port or 6379}]})
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": _meta(model, model.metadata.name, "serving"),
            "spec": {"podSelector": selector, "policyTypes": ["Ingress", "Egress"],
                     "ingress": [{"ports": [{"protocol": "TCP", "port": public_port_name(model)}]},
                                 {"ports": [{"protocol": "TCP", "port": PORTS[p]} for p in
                                            ("model-metrics", "validation-metrics", "ratelimit-metrics")],
                                  "from": [{"namespaceSelector": {}}]}],
                     "egress": egress}}


def build_jobs_network_policy(model: HardenedModel) -> dict:
    """The training and verify Job pods accept no connection at all; they reach out only to DNS and, when the
    spec needs it (s3:// data or store, Sigstore keyless signing), HTTPS. A training run over several pods
    opens its pods to each other with a policy of its own (jobs.build_training_peers_policy)."""
    s = model.spec
    egress = [DNS_EGRESS]
    if (StoreURI.parse(s.artifacts.store).scheme == "s3" or s.data.source.startswith("s3://")
            or s.signing.method == "keyless"
            or (s.model.initial_weights is not None and s.model.initial_weights.uri.startswith("s3://"))):
        egress.append({"ports": [{"protocol": "TCP", "port": 443}]})
    selector = {"matchLabels": {"hardened.dev/model": model.metadata.name},
                "matchExpressions": [{"key": "app.kubernetes.io/component", "operator": "In",
                                      "values": ["training", "verification"]}]}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": _meta(model, f"{model.metadata.name}-jobs", "training"),
            "spec": {"podSelector": selector, "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": egress}}


def build_pdb(model: HardenedModel) -> dict:
    """At most one serving pod down at a time for voluntary disruptions; drains still proceed."""
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": _meta(model, model.metadata.name, "serving"),
            "spec": {"maxUnavailable": 1,
                     "selector": {"matchLabels": serving_selector(model)}}}


def _kept_meta(model: HardenedModel, name: str, component: str) -> dict:
    """Generated credentials outlive their HardenedModel (no ownerReference, as cert-manager keeps its
    Secrets): deleting and re-creating a model must not rotate the API key its clients hold (they would get
    401) nor the key its stored versions are signed with (issue 14). `kubectl delete secret -l
    hardened.dev/model=NAME` removes them."""
    return {"name": name, "namespace": model.metadata.namespace, "labels": labels(model, component),
            "annotations": {"hardened.dev/kept": "generated for HardenedModel "
                                                 f"{model.metadata.name}; not deleted with it"}}


def build_api_keys_secret(model: HardenedModel, key: str) -> dict:
    """Generated when spec.serving.apiKeysSecret is omitted (``key`` comes from the caller: builders have no RNG)."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _kept_meta(model, names(model).api_keys_secret, "serving"),
            "stringData": {"keys": key + "\n"}}


def build_signing_secret(model: HardenedModel, private_pem: str, public_pem: str) -> dict:
    """Generated when spec.signing names no key Secrets (the key pair comes from the caller)."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _kept_meta(model, names(model).signing_secret, "signing"),
            "stringData": {"private.pem": private_pem, "public.pem": public_pem}}
