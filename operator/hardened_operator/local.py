"""`hardened-model up`: the operator's stages as local processes, no cluster.

Same programs as in a cluster, no second implementation of any stage, and
the same command lines: ``manifests.commands`` builds them for the pods and
for these processes alike; only the ``Layout`` differs (files under the state
folder and free ports on 127.0.0.1 here, mount paths and container ports
there). train = ``python -m hardened_trainer`` with the config
``build_trainer_config`` writes; verify = ``hardened-model verify`` with the
spec's trust policy and gates; serve = ``serve`` / ``validate-proxy`` /
``ratelimit-proxy`` with the ``serving.json`` that ``build_serving_config``
renders.

State lives in a project-local folder (default ``.hardened/``)::

    .hardened/secrets/<secret>/<key>        stands in for Kubernetes Secrets
    .hardened/volumes/<claim>/...           stands in for pvc:// stores
    .hardened/<model>/                      trainer config, serving.json, logs, state.json

A version that exists and verifies is not trained again (as in the operator).
"""
from __future__ import annotations

import json
import os
import pathlib
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from hardened_model.artifacts import StoreURI
from hardened_model.contracts import build_serving_config
from hardened_model.contracts import build_trainer_config, training_version
from hardened_model.signing import MODEL_DIR_NAME, SIGNATURE_NAME, generate_key_pair
from hardened_model.spec import HardenedModel
from . import runkeys
from .manifests import commands
from .manifests.commands import Layout
from .manifests.objects import names


class StageFailed(RuntimeError):
    def __init__(self, stage: str, reason: str, code: int = 1):
        super().__init__(f"{stage}: {reason}")
        self.stage, self.reason, self.code = stage, reason, code


@dataclass
class Paths:
    root: pathlib.Path
    model: HardenedModel

    @property
    def home(self) -> pathlib.Path:
        return self.root / self.model.metadata.name

    def secret(self, name: str, key: str) -> pathlib.Path:
        return self.root / "secrets" / name / key

    def version_dir(self) -> pathlib.Path:
        spec = self.model.spec
        store = StoreURI.parse(spec.artifacts.store)
        version = training_version(spec)
        if store.scheme == "file":
            return store.local_path(self.model.metadata.name, version)
        if store.scheme == "pvc":
            return store.local_path(self.model.metadata.name, version, mount=str(self.root / "volumes" / store.bucket))
        # s3: train into a local folder, the trainer uploads it; serve the local copy
        return self.root / "volumes" / "s3" / store.bucket / store.prefix / self.model.metadata.name / version


@dataclass
class UpResult:
    url: str
    api_key_file: pathlib.Path | None
    report: pathlib.Path
    metrics: dict
    digest: str
    version: str
    trained: bool
    gates_passed: bool = True
    warnings: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)
    example_row: list[float] | None = None  # tabular: the training means, for the printed example request
    ca_file: pathlib.Path | None = None  # serving.tls: the CA that signed the endpoint's certificate
    client_cert: pathlib.Path | None = None  # serving.tls.clientCASecret: a client certificate and its key
    client_key: pathlib.Path | None = None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT_FIELDS = ("model_port", "model_metrics_port", "validation_port", "validation_metrics_port", "ratelimit_port",
               "ratelimit_metrics_port")


def local_layout(model: HardenedModel, paths: Paths, ports: dict[str, int] | None = None) -> Layout:
    """Where `up`'s processes find things: the stand-ins for the spec's Secrets (``secrets/NAME/KEY``), the
    version folder, and ``ports`` (``PORT_FIELDS``; 0 until serving starts). Everything listens on 127.0.0.1:
    a laptop's endpoint is not the network's. The verifier's verdict is read from its stdout, the trainer's
    from its termination file; keyless signing has no files here (`up` refuses it)."""
    s, home, n = model.spec, paths.home, names(model)
    public, keys = s.signing.public_key_secret, s.serving.api_keys_secret
    jwt, tls = s.serving.auth.jwt, s.serving.tls
    return Layout(
        server=(sys.executable, "-m", "hardened_operator.cli"), trainer=(sys.executable, "-m", "hardened_trainer"),
        trainer_config=str(home / "train.json"), serving_config=str(home / "serving.json"),
        artifact=str(paths.version_dir()), artifact_uri=None,  # an s3:// version is trained here, then uploaded
        public_key=str(paths.secret(public.name, public.key) if public else paths.secret(n.signing_secret,
                                                                                          "public.pem")),
        trust_config=None,
        api_keys=str(paths.secret(keys.name, keys.key) if keys else home / "api-keys"),
        jwks=str(paths.secret(jwt.jwks.name, jwt.jwks.key)) if jwt else None,
        tls_cert=str(paths.secret(tls.secret_name, "tls.crt")) if tls else None,
        tls_key=str(paths.secret(tls.secret_name, "tls.key")) if tls else None,
        client_ca=str(paths.secret(tls.client_ca_secret, "ca.crt")) if tls and tls.client_ca_secret else None,
        trainer_termination_log=str(home / "train.result.json"), verify_termination_log=None, cpu_threads=None,
        rendezvous_host=None, node_rank=None,  # every rank of training.distributed runs on this machine
        checkpoint_dir=str(home / "checkpoints" / training_version(s)),  # a rerun of `up` resumes
        host="127.0.0.1", public_host="127.0.0.1", metrics_host="127.0.0.1",
        **{f: (ports or {}).get(f, 0) for f in PORT_FIELDS})


class LocalRunner:
    """Runs the stages; ``say`` receives progress events (the CLI renders them with rich)."""

    def __init__(self, model: HardenedModel, *, root: pathlib.Path, say=None, env: dict | None = None):
        self.model, self.paths = model, Paths(root, model)
        self.say = say or (lambda event, **kw: None)
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.warnings: list[str] = []
        self.procs: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------ signing
    def signing_keys(self) -> tuple[pathlib.Path | None, pathlib.Path | None]:
        """The signing key pair's files (made for a development run when absent); (None, None) for
        signing.method ephemeral, whose trainer makes its own key (``run_key_file``)."""
        s = self.model.spec.signing
        if s.method == "ephemeral":
            return None, None
        if s.method == "keyless":
            raise StageFailed("sign", "signing.method keyless needs Sigstore (Fulcio, Rekor) and an OIDC identity; "
                                      "`up` signs with keys only: use method key", code=2)
        ref = s.private_key_secret
        priv = (self.paths.secret(ref.name, ref.key) if ref
                else self.paths.secret(names(self.model).signing_secret, "private.pem"))
        pub = pathlib.Path(self.layout().public_key)
        if priv.exists() != pub.exists():
            raise StageFailed("sign", f"found only one of {priv} and {pub}; provide both or neither", code=2)
        if not priv.exists():
            generated_priv, generated_pub = generate_key_pair(priv.parent / ".new")
            priv.parent.mkdir(parents=True, exist_ok=True)
            pub.parent.mkdir(parents=True, exist_ok=True)
            generated_priv.replace(priv)
            generated_pub.replace(pub)
            (priv.parent / ".new").rmdir()
            msg = (f"generated a DEVELOPMENT signing key pair in {priv.parent} (EC P-256). Models it signs are "
                   f"trusted only by this key; in a cluster, put your own key in the Secret the spec names.")
            self.warnings.append(msg)
            self.say("warning", message=msg)
        return priv, pub

    def run_key_file(self) -> pathlib.Path:
        """signing.method ephemeral: the public key the trainer reported for this version (its private key
        lived in the trainer's memory only). Trusted as the rest of this folder is: `up` has one user."""
        return self.paths.home / "run-keys" / f"{training_version(self.model.spec)}.pem"

    def trusted_keys(self) -> tuple[str, ...] | None:
        """What the verifiers trust inline: the run's key under signing.method ephemeral, else None (the key
        file of the layout)."""
        if self.model.spec.signing.method != "ephemeral":
            return None
        path = self.run_key_file()
        return (path.read_text(),) if path.exists() else ()

    def layout(self, ports: dict[str, int] | None = None) -> Layout:
        return local_layout(self.model, self.paths, ports)

    def api_key_file(self) -> pathlib.Path:
        path = pathlib.Path(self.layout().api_keys)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(f"hm_{secrets.token_urlsafe(24)}\n")
            self.say("info", message=f"generated an API key in {path}")
        return path

    def edge_files(self) -> dict:
        """The rate-limit sidecar's credentials (API keys, JWKS, TLS certificate and client CA) at the layout's
        local stand-ins of the spec's Secrets (``secrets/NAME/KEY`` under the state folder). A missing TLS Secret
        gets a development CA and a localhost certificate, a missing client CA a development one and a client
        certificate to call with; a missing JWKS is an error (`up` cannot invent your identity provider)."""
        from . import devcerts

        s, layout, extra = self.model.spec.serving, self.layout(), {}
        if s.auth.api_keys:
            extra["api_key_file"] = self.api_key_file()
        if s.auth.jwt:
            ref = s.auth.jwt.jwks
            jwks = pathlib.Path(layout.jwks)
            if not jwks.exists():
                raise StageFailed("serve", f"spec.serving.auth.jwt.jwks: {ref.kind} {ref.name} key {ref.key}: put the "
                                           f"JWKS document in {jwks}", code=2)
        if s.tls:
            cert, key = pathlib.Path(layout.tls_cert), pathlib.Path(layout.tls_key)
            ca = self.paths.home / "dev-ca.crt"
            if not cert.exists():
                ca_pem, ca_key = devcerts.make_ca(f"hardened-model dev CA ({self.model.metadata.name})")
                crt_pem, key_pem = devcerts.issue(ca_pem, ca_key, "localhost", hosts=("localhost", "127.0.0.1", "::1"))
                devcerts.write(ca, ca_pem)
                devcerts.write(key, key_pem, private=True)
                devcerts.write(cert, crt_pem)
                msg = (f"generated a DEVELOPMENT CA ({ca}) and a certificate for localhost in {cert.parent}; in a "
                       f"cluster, spec.serving.tls.secretName names your issuer's Secret (e.g. cert-manager's)")
                self.warnings.append(msg)
                self.say("warning", message=msg)
            extra["ca_file"] = ca if ca.exists() else None
            if s.tls.client_ca_secret:
                client_ca = pathlib.Path(layout.client_ca)
                client_cert, client_key = self.paths.home / "client.crt", self.paths.home / "client.key"
                if not client_ca.exists():
                    ca_pem, ca_key = devcerts.make_ca(f"hardened-model dev client CA ({self.model.metadata.name})")
                    crt_pem, key_pem = devcerts.issue(ca_pem, ca_key, "dev-client", client=True)
                    devcerts.write(client_key, key_pem, private=True)
                    devcerts.write(client_cert, crt_pem)
                    devcerts.write(client_ca, ca_pem)
                    self.say("info", message=f"generated a development client CA and a client certificate "
                                             f"({client_cert})")
                if client_cert.exists():
                    extra.update(client_cert=client_cert, client_key=client_key)
        return extra

    # -------------------------------------------------------------- stages
    def verify_argv(self, *, expect_digest: str | None = None) -> list[str]:
        """The verification Job's check (signature, gates, provenance), and the pinned digest once trained."""
        return commands.verify(self.model, self.layout(), digest=expect_digest, trusted_keys=self.trusted_keys())

    def train_argv(self) -> list[str]:
        return commands.trainer(self.model, self.layout())

    def serving_argvs(self, digest: str, ports: dict[str, int]) -> dict[str, list[str]]:
        return commands.serving(self.model, self.layout(ports), digest=digest, trusted_keys=self.trusted_keys())

    def verify(self, *, expect_digest: str | None = None) -> dict:
        proc = subprocess.run(self.verify_argv(expect_digest=expect_digest), capture_output=True, text=True,
                              env=self.env)
        try:
            result = json.loads(proc.stdout.splitlines()[0])
        except (IndexError, ValueError):
            raise StageFailed("verify", f"verifier crashed: {proc.stderr.strip()[-500:]}") from None
        result["exitCode"] = proc.returncode
        return result

    def train(self, version_dir: pathlib.Path, private_key: pathlib.Path | None) -> dict:
        home = self.paths.home
        iw = self.model.spec.model.initial_weights
        volumes = {}
        if iw is not None and iw.uri.startswith("pvc://"):  # .hardened/volumes/<claim> stands in for the claim
            claim = iw.uri[len("pvc://"):].split("/", 1)[0]
            volumes[claim] = str(self.paths.root / "volumes" / claim)
        config = build_trainer_config(self.model, output_dir=str(version_dir),
                                      private_key_path=str(private_key) if private_key else None, volumes=volumes)
        (home / "train.json").write_text(json.dumps(config, indent=2, sort_keys=True))  # as the ConfigMap's
        log_path = home / "logs" / "train.log"
        result, last_error = None, None
        self.say("train-begin", epochs=self.model.spec.training.epochs, version=config["version"])
        with open(log_path, "w") as log:
            proc = subprocess.Popen(self.train_argv(), stdout=subprocess.PIPE, stderr=log, text=True, env=self.env)
            try:
                for line in proc.stdout:
                    log.write(line)
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    kind = event.pop("event", "")
                    self.say(f"train-{kind}", **event)
                    if kind == "result":
                        result = event
                    elif kind == "error":
                        last_error = event
                code = proc.wait()
            finally:  # Ctrl-C or a crash here must not leave the trainer running
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(10)
        if code == 3:
            raise StageFailed("gates", "the model missed a gate: " + "; ".join(self._failed_gates(version_dir))
                              + f" (report: {version_dir / MODEL_DIR_NAME / 'report.html'})", code=3)
        if code != 0:
            reason = (last_error or {}).get("message") or f"trainer exited {code}; see {log_path}"
            field = (last_error or {}).get("field")
            raise StageFailed("train", f"{field}: {reason}" if field else reason, code=2 if code == 2 else 1)
        if self.model.spec.signing.method == "ephemeral":
            key = runkeys.reported(result)
            if key is None:
                raise StageFailed("sign", "signing.method ephemeral: the trainer reported no per-run public key "
                                          f"(signingKey); see {log_path}", code=1)
            self.run_key_file().parent.mkdir(parents=True, exist_ok=True)
            self.run_key_file().write_text(key)
        return result

    @staticmethod
    def _failed_gates(version_dir: pathlib.Path) -> list[str]:
        metrics = json.loads((version_dir / MODEL_DIR_NAME / "metrics.json").read_text())
        return [f"{g['gate']} {g['value']} vs {g['threshold']}" for g in metrics.get("gates", []) if not g["passed"]]

    def start_serving(self, digest: str, *, port: int | None = None) -> tuple[str, dict]:
        home = self.paths.home
        (home / "serving.json").write_text(json.dumps(build_serving_config(self.model), indent=2, sort_keys=True))
        extra = self.edge_files()
        ports = {f: _free_port() for f in PORT_FIELDS}
        ports["ratelimit_port"] = port or ports["ratelimit_port"]
        layout = self.layout(ports)
        for name, argv in self.serving_argvs(digest, ports).items():
            log = open(home / "logs" / f"{name}.log", "wb")
            self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                                start_new_session=True)
            # the rate-limit sidecar's admin /readyz asks the chain (its public port may want TLS client certs)
            self._wait_ready(name, f"http://{layout.metrics_host}:{layout.ratelimit_metrics_port}/readyz"
                             if name == "ratelimit" else f"http://{layout.host}:{ports[f'{name}_port']}/v2/health/ready")
        url = f"{'https' if self.model.spec.serving.tls else 'http'}://{layout.public_host}:{layout.ratelimit_port}"
        self._write_state(url=url, ports={f.removesuffix("_port"): p for f, p in ports.items()}, digest=digest,
                          version_dir=layout.artifact)
        return url, extra

    def _wait_ready(self, name: str, url: str, timeout: float = 60.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        proc = self.procs[name]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log = (self.paths.home / "logs" / f"{name}.log").read_text(errors="replace")
                self.stop()
                raise StageFailed("serve", f"{name} exited {proc.returncode}: {log.strip().splitlines()[-1:]}")
            try:
                with urllib.request.urlopen(url, timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise StageFailed("serve", f"{name} not ready after {timeout:.0f}s")

    def _write_state(self, **extra) -> None:
        state = {"model": self.model.metadata.name, "pids": {n: p.pid for n, p in self.procs.items()},
                 "started": time.time(), **extra}
        (self.paths.home / "state.json").write_text(json.dumps(state, indent=2))

    def stop(self, timeout: float = 15.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        state = self.paths.home / "state.json"
        if state.exists():
            state.unlink()

    # ----------------------------------------------------------------- all
    def up(self, *, port: int | None = None) -> UpResult:
        home = self.paths.home
        (home / "logs").mkdir(parents=True, exist_ok=True)
        if (home / "state.json").exists():
            stop_from_state(home / "state.json")  # a second `up` replaces the first
        priv, _ = self.signing_keys()
        version_dir = self.paths.version_dir()
        version = training_version(self.model.spec)
        # an ephemeral version whose run key is gone cannot verify: it trains again
        existing = self.verify() if (version_dir / SIGNATURE_NAME).exists() and self.trusted_keys() != () else None
        trained = False
        if existing and existing["exitCode"] == 0:
            self.say("info", message=f"version {version} exists and verifies: not training again")
            digest, verdict = existing["digest"], existing  # signature and gates already checked
        else:
            if existing:
                self.say("warning", message=f"existing version {version} refused ({existing['reason']}): retraining")
            result = self.train(version_dir, priv)
            digest, trained = result["digest"], True
            self.say("verify-start")
            verdict = self.verify(expect_digest=digest)
        self.say("verify-done", **verdict)
        if verdict["exitCode"] != 0:
            if self.model.spec.signing.mode == "Enforce" or not verdict.get("verified"):
                raise StageFailed("verify", verdict["reason"], code=3)
            msg = f"signing.mode Warn: serving although {verdict['reason']}"
            self.warnings.append(msg)
            self.say("warning", message=msg)
        self.say("serve-start")
        url, extra = self.start_serving(digest, port=port)
        return UpResult(url=url, api_key_file=extra.get("api_key_file"), ca_file=extra.get("ca_file"),
                        client_cert=extra.get("client_cert"), client_key=extra.get("client_key"), report=version_dir / MODEL_DIR_NAME / "report.html",
                        metrics=verdict.get("metrics", {}), digest=digest, version=version, trained=trained,
                        gates_passed=verdict.get("gatesPassed", True) is not False, warnings=self.warnings,
                        pids={n: p.pid for n, p in self.procs.items()},
                        example_row=json.loads((version_dir / MODEL_DIR_NAME / "model.json").read_text()).get(
                            "inputStats", {}).get("mean") if self.model.spec.data.format == "tabular" else None)


def stop_from_state(state_file: pathlib.Path, timeout: float = 15.0) -> list[str]:
    """Stop the processes a detached `up` left running (SIGTERM, then SIGKILL)."""
    state = json.loads(state_file.read_text())
    stopped = []
    for name, pid in state.get("pids", {}).items():
        try:
            os.kill(pid, signal.SIGTERM)
            stopped.append(name)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + timeout
    for pid in state.get("pids", {}).values():
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    state_file.unlink(missing_ok=True)
    return stopped
