"""The command line of every process a model runs, for the cluster and for `hardened-model up` alike.

The flags were built twice, once for the pods and once for the local processes, and drifted apart (issue 26):
the local verifier got the gates with unsorted keys and the provenance policy with other separators. Here
the spec decides which flags a process gets and a ``Layout`` says where things are: the cluster's Layout
holds mount paths and container ports (``objects.cluster_layout``), the local one files under the state
folder and free ports on 127.0.0.1 (``local.local_layout``). Nothing else may differ between the two.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from hardened_model.provenance import policy_for as provenance_policy
from hardened_model.signing import MODEL_DIR_NAME
from hardened_model.spec import HardenedModel, to_wire


@dataclass(frozen=True)
class Layout:
    """Where one deployment of a model keeps its files and listens. A path is ``None`` where this layout has
    no such file; a flag the spec needs from a ``None`` path is an error (see ``_need``)."""

    server: tuple[str, ...]          # runs verify, serve, validate-proxy and ratelimit-proxy
    trainer: tuple[str, ...]
    trainer_config: str              # train.json
    serving_config: str              # serving.json
    artifact: str                    # the version folder (model/ and model.sig) as the processes see it
    artifact_uri: str | None         # verify downloads the version from here into ``artifact`` first
    public_key: str | None           # signing.method key
    trust_config: str | None         # signing.keyless.trustConfig
    api_keys: str | None
    jwks: str | None
    tls_cert: str | None
    tls_key: str | None
    client_ca: str | None
    # the kubelet reads a pod's verdict from its termination log; `up` reads the verifier's stdout and the
    # trainer's file: None leaves the flag out (the trainer's default is the kubelet's file)
    trainer_termination_log: str | None
    verify_termination_log: str | None
    cpu_threads: str | None          # the model server's torch threads; None: the server's default
    # training.distributed over several pods (the cluster's Indexed Job): node 0's host (RENDEZVOUS_PORT) and
    # this pod's node rank; None: every rank on this machine (one pod, or `up`, which runs nodes x
    # processesPerNode here)
    rendezvous_host: str | None
    node_rank: str | None
    # where the trainer checkpoints every epoch, so a retried pod resumes (and ε counts every step taken);
    # None where nothing outlives the pod (an s3:// store's pods keep nothing)
    checkpoint_dir: str | None
    host: str                        # the model server and validation sidecar listen here, and are called here
    public_host: str                 # the rate-limit sidecar, the only door
    metrics_host: str                # every admin port (/metrics, /healthz, /readyz)
    model_port: int
    model_metrics_port: int
    validation_port: int
    validation_metrics_port: int
    ratelimit_port: int
    ratelimit_metrics_port: int


@dataclass(frozen=True)
class Countersignature:
    """What the serving pods' init container holds a version against when the operator has a platform key
    (issue 27, hardened_model.countersign): the DSSE envelope the operator signed for it and the key's public
    PEM. Only the cluster has it: `up` runs no platform step."""

    envelope: dict
    public_key_pem: str


def json_arg(value, *, spaced: bool = False) -> str:
    """The one form of a JSON flag: sorted keys, so equal values give equal pod specs (and no rollout).
    ``spaced``: json's default separators, which the verification Job's ``--gates`` has always carried;
    compact everywhere else."""
    return json.dumps(value, sort_keys=True, separators=None if spaced else (",", ":"))


def _need(layout: Layout, field: str) -> str:
    value = getattr(layout, field)
    if value is None:
        raise ValueError(f"the spec needs a {field} file, which this layout does not have (Layout.{field})")
    return value


def _trust(model: HardenedModel, layout: Layout, trusted_keys: tuple[str, ...] | None = None) -> list[str]:
    """What the verifier trusts. ``trusted_keys``: the public keys the HardenedModelPolicies selecting the
    namespace hold (policy.trusted_public_keys), inline, in place of spec.signing.publicKeySecret: the tenant
    writes that Secret, the cluster admin the policy (issue 27). Only the cluster has policies. Under
    signing.method ephemeral they are the run's own key, which the trainer reported (the cluster: as the
    kubelet recorded it in the training pod's status), the one trust root there is."""
    s = model.spec.signing
    if s.method == "ephemeral" and not trusted_keys:
        raise ValueError("signing.method ephemeral: no per-run public key to verify with (the trainer reports it "
                         "when it has signed)")
    if s.method in ("key", "ephemeral") and trusted_keys is not None:
        return [arg for pem in trusted_keys for arg in ("--public-key-pem", pem)]
    if s.method == "keyless":
        args = ["--identity", s.keyless.identity, "--oidc-issuer", s.keyless.oidc_issuer]
        if s.keyless.trust_config is not None:  # else Sigstore's public-good root, bundled with sigstore-python
            args += ["--trust-config", _need(layout, "trust_config")]
        return args
    return ["--public-key", _need(layout, "public_key")]


def _listen(layout: Layout, host: str, port: int, metrics_port: int) -> list[str]:
    return ["--host", host, "--port", str(port), "--metrics-host", layout.metrics_host,
            "--metrics-port", str(metrics_port)]


# torchrun's module form: `python -m torch.distributed.run [launch flags] --module hardened_trainer ...`
TORCHRUN = "torch.distributed.run"
RENDEZVOUS_PORT = 29500


def world(model: HardenedModel) -> tuple[int, int] | None:
    """(nodes, processes per node) of training.distributed, None without it. Absent processesPerNode: one
    rank per GPU the pod requests, else 1 (torchrun's own ``auto`` would count the node's GPUs, not the pod's)."""
    t = model.spec.training
    if t.distributed is None:
        return None
    return t.distributed.nodes, t.distributed.processes_per_node or max(t.resources.gpus, 1)


def trainer(model: HardenedModel, layout: Layout) -> list[str]:
    """The trainer; under training.distributed, torchrun starting it once per rank (``--max-restarts 0``: a
    failed rank fails the run, which the Job reports; a restart that resumes is the Job's, from the checkpoint).
    With ``layout.rendezvous_host`` the pods meet at node 0 (static rendezvous, the node rank from the Job's
    completion index); without, every rank runs here (``--standalone``)."""
    args = ["--config", layout.trainer_config]
    if layout.trainer_termination_log:
        args += ["--termination-log", layout.trainer_termination_log]
    if layout.checkpoint_dir:
        args += ["--checkpoint-dir", layout.checkpoint_dir]
    shape = world(model)
    if shape is None:
        return [*layout.trainer, *args]
    nodes, per_node = shape
    python, flag, module = layout.trainer  # (python, "-m", "hardened_trainer")
    if layout.rendezvous_host is None:
        launch = ["--standalone", "--nnodes", "1", "--nproc-per-node", str(nodes * per_node)]
    else:
        launch = ["--nnodes", str(nodes), "--nproc-per-node", str(per_node), "--node-rank", _need(layout, "node_rank"),
                  "--master-addr", layout.rendezvous_host, "--master-port", str(RENDEZVOUS_PORT)]
    return [python, flag, TORCHRUN, *launch, "--max-restarts", "0", "--module", module, *args]


def verify(model: HardenedModel, layout: Layout, *, digest: str | None = None, gates: bool = True,
           version_ids: dict[str, str] | None = None, observed_trainer: dict[str, str] | None = None,
           countersignature: Countersignature | None = None,
           trusted_keys: tuple[str, ...] | None = None) -> list[str]:
    """The verification Job and `up` check the gates; the serving pod's init container checks signature and
    pinned digest only (the gates held at rollout; a tightened gate stops the next rollout, not a running one).
    ``version_ids``: the S3 object versions the trainer uploaded, to download exactly those.
    ``observed_trainer``: {"image", "imageID"} the kubelet ran for the training pod (issue 27), which the
    provenance must match; the cluster's callers have it, `up` has no kubelet and passes none. It is not a
    Layout's: where a process runs does not decide it, what was observed does. ``countersignature``: the
    init container's, with the operator's platform key (the envelope inline: the Deployment carries it).
    ``trusted_keys``: see _trust."""
    s = model.spec
    args = [*layout.server, "verify", *_trust(model, layout, trusted_keys)]
    if layout.verify_termination_log:
        args += ["--termination-log", layout.verify_termination_log]
    if gates:
        args += ["--gates", json_arg(to_wire(s.gates), spaced=True)]
    if digest:
        args += ["--expect-digest", digest]
    policy = provenance_policy(s)
    if policy:  # every verifier enforces it
        args += ["--provenance-policy", json_arg(policy)]
    if observed_trainer and observed_trainer.get("image"):
        args += ["--observed-trainer-image", observed_trainer["image"]]
        if observed_trainer.get("imageID"):
            args += ["--observed-trainer-image-id", observed_trainer["imageID"]]
        if observed_trainer.get("node"):  # echoed into the report, so the countersignature names the node
            args += ["--observed-trainer-node", observed_trainer["node"]]
    if countersignature is not None:
        args += ["--countersignature", json_arg(countersignature.envelope),
                 "--platform-public-key-pem", countersignature.public_key_pem,
                 "--expect-model", f"{model.metadata.namespace}/{model.metadata.name}"]
    args += ["--artifact", layout.artifact]
    if layout.artifact_uri:
        args += ["--uri", layout.artifact_uri]
        if s.artifacts.region or s.aws.region:
            args += ["--region", s.artifacts.region or s.aws.region]
        if s.artifacts.endpoint:
            args += ["--endpoint", s.artifacts.endpoint]
        if version_ids:
            args += ["--version-ids", json_arg(version_ids)]
    return args


def serve(model: HardenedModel, layout: Layout, *, digest: str,
          trusted_keys: tuple[str, ...] | None = None) -> list[str]:
    args = [*layout.server, "serve", "--artifact", layout.artifact, *_trust(model, layout, trusted_keys),
            "--expect-digest", digest]
    if layout.cpu_threads:
        args += ["--cpu-threads", layout.cpu_threads]
    return args + _listen(layout, layout.host, layout.model_port, layout.model_metrics_port)


def validate_proxy(layout: Layout) -> list[str]:
    return [*layout.server, "validate-proxy", "--config", layout.serving_config,
            "--upstream", f"http://{layout.host}:{layout.model_port}",
            "--model-dir", f"{layout.artifact}/{MODEL_DIR_NAME}",
            *_listen(layout, layout.host, layout.validation_port, layout.validation_metrics_port)]


def ratelimit_proxy(model: HardenedModel, layout: Layout) -> list[str]:
    s = model.spec.serving
    args = [*layout.server, "ratelimit-proxy", "--config", layout.serving_config]
    if s.auth.api_keys:
        args += ["--api-keys", _need(layout, "api_keys")]
    if s.auth.jwt:
        args += ["--jwks", _need(layout, "jwks")]
    if s.tls:
        args += ["--tls-cert", _need(layout, "tls_cert"), "--tls-key", _need(layout, "tls_key")]
        if s.tls.client_ca_secret:
            args += ["--client-ca", _need(layout, "client_ca")]
    return args + ["--upstream", f"http://{layout.host}:{layout.validation_port}",
                   *_listen(layout, layout.public_host, layout.ratelimit_port, layout.ratelimit_metrics_port)]


def serving(model: HardenedModel, layout: Layout, *, digest: str,
            trusted_keys: tuple[str, ...] | None = None) -> dict[str, list[str]]:
    """The serving chain, in start order: model server, validation sidecar, rate-limit sidecar."""
    return {"model": serve(model, layout, digest=digest, trusted_keys=trusted_keys),
            "validation": validate_proxy(layout),
            "ratelimit": ratelimit_proxy(model, layout)}
