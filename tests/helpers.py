"""Helpers shared by the tests (fixtures live in conftest.py)."""
import copy
import json
import pathlib

from hardened_model.spec import load_yaml_documents

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def example(name: str) -> dict:
    """An example manifest as plain data (each call returns a fresh copy)."""
    return load_yaml_documents((ROOT / "examples" / f"{name}.yaml").read_text())[0]


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch: null deletes, objects merge, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# A spec that trains in seconds: 300 digits, 2 epochs, PGD + DP-SGD, tiny evaluation.
TINY = {
    "data": {"maxSamples": 300, "validationSplit": 0.25},
    "training": {"epochs": 2, "batchSize": 64, "learningRate": 0.1,
                 "adversarial": {"enabled": True, "attack": "pgd", "eps": 0.1, "maxIter": 3},
                 "privacy": {"enabled": True, "targetEpsilon": 8.0, "targetDelta": 1e-5}},
    "evaluation": {"maxSamples": 40, "pgdIter": 3},
    "gates": {"minCleanAccuracy": 0.0, "minRobustAccuracy": 0.0, "maxEpsilon": 8.0, "maxMembershipAUC": 1.0},
}


def tiny_manifest(overrides: dict | None = None) -> dict:
    doc = example("digits-demo")
    doc["spec"] = merge_patch(merge_patch(doc["spec"], TINY), overrides or {})
    return doc


def write_config(tmp: pathlib.Path, doc: dict, private_key: pathlib.Path, **kwargs) -> pathlib.Path:
    from hardened_model.contracts import build_trainer_config
    from hardened_model.spec import parse_manifest

    cfg = build_trainer_config(parse_manifest(doc), output_dir=str(tmp / "out"), private_key_path=str(private_key),
                               **kwargs)
    path = tmp / "train.json"
    path.write_text(json.dumps(cfg))
    return path


# ----------------------------------------------------------------- serving
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_fitted_model(root: pathlib.Path, model, x, y, *, steps: int, lr: float, model_json: dict,
                       metrics: dict) -> pathlib.Path:
    """``model`` fitted for ``steps`` full-batch Adam steps on (x, y), written as an unsigned model directory
    (root/model: weights, model.json, metrics.json, a report): what the signed test artifacts share."""
    import safetensors.torch
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    model_dir = root / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                str(model_dir / "model.safetensors"))
    (model_dir / "model.json").write_text(json.dumps(model_json))
    (model_dir / "metrics.json").write_text(json.dumps(metrics))
    (model_dir / "report.html").write_text("<html></html>")
    return model_dir


def make_artifact(root: pathlib.Path, private_key: pathlib.Path, *, name: str = "digits-demo",
                  metrics: dict | None = None, seed: int = 0, trainer_image: str | None = None) -> pathlib.Path:
    """A signed artifact without training: a cnn-8x8 fitted for a few steps on digits (seconds). With
    ``trainer_image``, a provenance statement (the trainer's builder, hardened_model.provenance) naming it and
    the digits file is signed with it."""
    import torch

    from hardened_model.signing import sign_model
    from hardened_trainer.data import load_dataset
    from hardened_model.networks import build_model

    torch.manual_seed(seed)
    ds = load_dataset("builtin:digits")
    model = build_model("cnn-8x8", [1, 8, 8], 10, mean=float(ds.x.mean()), std=float(ds.x.std()), check_dp=False)
    flat = ds.x.reshape(len(ds.x), -1)
    model_dir = write_fitted_model(root, model, ds.x, ds.y, steps=60, lr=0.01, model_json={
        "format": "hardened-model/v1", "name": name, "namespace": "default", "version": "0123456789ab",
        "architecture": "cnn-8x8", "inputShape": [1, 8, 8], "numClasses": 10, "labels": [str(i) for i in range(10)],
        "weights": "model.safetensors", "inputStats": {"mean": flat.mean(0).tolist(), "std": flat.std(0).tolist()}},
        metrics=metrics or {"cleanAccuracy": 0.95, "robustAccuracy": 0.6, "epsilon": 7.5, "membershipAUC": 0.52})
    if trainer_image is not None:
        from hardened_model.provenance import PROVENANCE_NAME, build_statement

        statement = build_statement(
            model_dir, model={"name": name, "namespace": "default", "version": "0123456789ab"}, training_spec={},
            spec_digest="0" * 64, data={"source": ds.source, "digest": ds.digest,
                                        "files": [{"name": f.name, "sha256": f.sha256, "size": f.size}
                                                  for f in ds.files]},
            trainer_image=trainer_image, initial_weights=None, seed=seed, device="cpu", invocation_id=None,
            started="2026-11-30T00:00:00Z", finished="2026-11-30T00:01:00Z")
        (model_dir / PROVENANCE_NAME).write_text(json.dumps(statement))
    sign_model(model_dir, root / "model.sig", private_key=private_key)
    return root


def serving_config(path: pathlib.Path, overrides: dict | None = None, name: str = "digits-demo", *,
                   base: str = "digits-demo") -> pathlib.Path:
    """The serving config of example ``base`` named ``name``, with ``overrides`` merged into spec.serving."""
    from hardened_model.contracts import build_serving_config
    from hardened_model.spec import parse_manifest

    doc = example(base)
    doc["metadata"]["name"] = name
    doc["spec"] = merge_patch(doc["spec"], {"serving": overrides or {}})
    path.write_text(json.dumps(build_serving_config(parse_manifest(doc))))
    return path


async def stub_upstream():
    """The validation sidecar's place, in this event loop: answers every request at once (the rate-limit sidecar
    is under test) and echoes the client id it was told. Returns (runner, url)."""
    from aiohttp import web

    async def infer(request):
        return web.json_response({"client": request.headers.get("X-Client-Id")})

    async def ok(_):
        return web.json_response({"ready": True})

    app = web.Application()
    app.router.add_post("/v2/models/{name}/infer", infer)
    app.router.add_get("/v2/health/ready", ok)
    app.router.add_get("/v2/health/live", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


class Process:
    """A `hardened-model` subcommand on loopback ports, stopped with SIGTERM (graceful shutdown)."""

    def __init__(self, *args: str, ready_url: str | None = None, log: pathlib.Path):
        import subprocess
        import sys

        self.log_path = log
        self.log = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "hardened_operator.cli", *args], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        if ready_url:
            try:
                self.wait_ready(ready_url)
            except BaseException:
                self.proc.kill()  # a server that never became ready must not outlive the test
                self.proc.wait(10)
                self.log.close()
                raise

    def wait_ready(self, url: str, timeout: float = 30.0) -> None:
        import time
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited {self.proc.returncode}: {self.output()}")
            try:
                with urllib.request.urlopen(url, timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"{url} not ready: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        finally:
            self.log.close()


def start_chain(tmp: pathlib.Path, artifact: pathlib.Path, public_key: pathlib.Path, config: pathlib.Path,
                keys: list[str], *extra: str) -> tuple[dict, list[Process]]:
    """The three serving processes on free loopback ports, each ready: (ports, processes). ``extra`` flags go
    to both sidecars."""
    (tmp / "keys").write_text("".join(k + "\n" for k in keys))
    ports = {n: free_port() for n in ("model", "model_m", "val", "val_m", "rl", "rl_m")}
    procs = [
        Process("serve", "--artifact", str(artifact), "--public-key", str(public_key), "--port", str(ports["model"]),
                "--metrics-port", str(ports["model_m"]), ready_url=f"http://127.0.0.1:{ports['model']}/v2/health/ready",
                log=tmp / "model.log"),
        Process("validate-proxy", "--config", str(config), "--upstream", f"http://127.0.0.1:{ports['model']}",
                "--model-dir", str(artifact / "model"), "--port", str(ports["val"]), "--metrics-port",
                str(ports["val_m"]), *extra, ready_url=f"http://127.0.0.1:{ports['val']}/v2/health/ready",
                log=tmp / "val.log"),
        Process("ratelimit-proxy", "--config", str(config), "--api-keys", str(tmp / "keys"), "--upstream",
                f"http://127.0.0.1:{ports['val']}", "--port", str(ports["rl"]), "--metrics-port", str(ports["rl_m"]),
                *extra, ready_url=f"http://127.0.0.1:{ports['rl']}/v2/health/ready", log=tmp / "rl.log"),
    ]
    return ports, procs


def ratelimit_sidecars(tmp: pathlib.Path, config: pathlib.Path, upstream: str, key: str,
                       count: int) -> tuple[list[int], list[Process]]:
    """``count`` rate-limit sidecars with one API key in front of ``upstream``, each ready: (ports, processes)."""
    (tmp / "keys").write_text(f"{key}\n")
    ports = [(free_port(), free_port()) for _ in range(count)]
    return [p for p, _ in ports], [
        Process("ratelimit-proxy", "--config", str(config), "--api-keys", str(tmp / "keys"), "--upstream", upstream,
                "--port", str(p), "--metrics-port", str(m), ready_url=f"http://127.0.0.1:{p}/v2/health/live",
                log=tmp / f"rl{i}.log")
        for i, (p, m) in enumerate(ports)]


def http(method: str, url: str, body=None, headers: dict | None = None, timeout: float = 10.0, context=None):
    """(status, parsed JSON or text, headers) without raising on 4xx/5xx; ``context``: an SSLContext for https."""
    import urllib.error
    import urllib.request

    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json",
                                                                         **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            raw, status, hdrs = r.read(), r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        raw, status, hdrs = e.read(), e.code, dict(e.headers)
    try:
        return status, json.loads(raw), hdrs
    except ValueError:
        return status, raw.decode(errors="replace"), hdrs


def infer_body(x, name: str = "input") -> dict:
    import numpy as np

    x = np.asarray(x, np.float32)
    return {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}]}


# Volume types the "restricted" Pod Security Standard allows.
_RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}


def restricted_pss_violations(pod: dict) -> list[str]:
    """What a pod spec breaks of the Kubernetes "restricted" Pod Security Standard (v1.30+), plus our own rule
    of a read-only root filesystem. Empty when it complies."""
    out = []
    psc = pod.get("securityContext") or {}
    containers = pod.get("initContainers", []) + pod.get("containers", [])
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            out.append(flag)
    for v in pod.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= _RESTRICTED_VOLUMES:
            out.append(f"volume {v['name']}: {sorted(kinds)}")
    if psc.get("runAsUser") == 0:
        out.append("pod runAsUser 0")
    for c in containers:
        sc = c.get("securityContext") or {}
        name = c["name"]
        if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True):
            out.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser") == 0:
            out.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile {seccomp}")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation")
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []) or set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: capabilities {caps}")
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{name}: readOnlyRootFilesystem")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            out.append(f"{name}: hostPort")
    return out


# ------------------------------------------------------------------- images
SBOM_PATH = "/usr/share/hardened-model/sbom.cdx.json"  # where each image carries its CycloneDX SBOM


def pinned_versions() -> dict[str, str]:
    """requirements/constraints.txt as {normalized name: version}."""
    import re

    out = {}
    for line in (ROOT / "requirements/constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            out[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return out
