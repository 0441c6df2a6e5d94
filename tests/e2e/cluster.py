"""Everything the end-to-end tests do to a real cluster, in one place: start or find it, build and load the
images, install the chart, kubectl, waits, port-forwards, and the dump of pods, logs and Events on failure.

Which cluster (the first that applies):
- ``E2E_KUBECONFIG``: any cluster (kind, k3s, a cloud cluster). The images must be pullable there or loaded
  beforehand (``kind load docker-image``); name them with E2E_OPERATOR_IMAGE, E2E_TRAINER_IMAGE and
  E2E_SERVER_IMAGE. Nothing is started or stopped.
- otherwise ``../shared/kube`` (or ``$HARDENED_KUBE_DIR``), a single-node v1.36 cluster started here as root;
  the images are built with ``scripts/build-images`` (buildah; reused while the tree is unchanged). A cluster
  that this session started is stopped at the end (unless E2E_KEEP_CLUSTER=1); one that was already running
  is left running.
When neither applies (no kubeconfig, not root, no ../shared/kube) the e2e tests are skipped, saying why.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time

import yaml

from helpers import ROOT

KUBE_DIR = pathlib.Path(os.environ.get("HARDENED_KUBE_DIR") or ROOT.parent / "shared" / "kube")
KUBE_HOME = pathlib.Path(os.environ.get("KUBE_HOME", "/var/tmp/hardened-kube"))
CHART = ROOT / "charts/hardened-model-operator"
HELM = str(ROOT / ".venv/bin/helm")
OPERATOR_NS = "hardened-system"


class Unavailable(Exception):
    """No cluster can be used here; the message says why (the tests are skipped with it)."""


def _alive(component: str) -> bool:
    try:
        os.kill(int((KUBE_HOME / "run" / f"{component}.pid").read_text()), 0)
        return True
    except (OSError, ValueError):
        return False


class Cluster:
    def __init__(self, kubeconfig: pathlib.Path, *, started: bool, shared: bool):
        self.kubeconfig, self.started, self.shared = kubeconfig, started, shared
        self.kubectl_bin = shutil.which("kubectl") or str(KUBE_HOME / "venv/bin/kubectl")

    # ------------------------------------------------------------ lifecycle
    @classmethod
    def find_or_start(cls, *, node: bool = True) -> "Cluster":
        if os.environ.get("E2E_KUBECONFIG"):
            return cls(pathlib.Path(os.environ["E2E_KUBECONFIG"]), started=False, shared=False)
        if not (KUBE_DIR / "up").exists():
            raise Unavailable(f"no cluster: E2E_KUBECONFIG is not set and {KUBE_DIR}/up does not exist")
        if os.geteuid() != 0:
            raise Unavailable(f"no cluster: E2E_KUBECONFIG is not set and {KUBE_DIR} must run as root "
                              f"(uid {os.geteuid()})")
        kubeconfig = KUBE_HOME / "kubeconfig"
        if _alive("kube-apiserver") and (_alive("kubelet") or not node):
            return cls(kubeconfig, started=False, shared=True)
        if _alive("kube-apiserver") or _alive("etcd"):  # a control plane without the node we need
            subprocess.run([str(KUBE_DIR / "down")], check=False, capture_output=True)
        t0 = time.monotonic()
        out = subprocess.run([str(KUBE_DIR / "up")], capture_output=True, text=True,
                             env={**os.environ, "NODE": "1" if node else "0"})
        if out.returncode != 0:
            raise RuntimeError(f"{KUBE_DIR}/up failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        print(f"e2e: started {KUBE_DIR} in {time.monotonic() - t0:.0f}s")
        return cls(kubeconfig, started=True, shared=True)

    def stop(self) -> None:
        if self.started and not os.environ.get("E2E_KEEP_CLUSTER"):
            self.started = False
            subprocess.run([str(KUBE_DIR / "down")], check=False, capture_output=True, timeout=300)

    @property
    def env(self) -> dict:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    # --------------------------------------------------------------- kubectl
    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess:
        out = subprocess.run([self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", *args], input=input,
                             capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({out.returncode}): {out.stderr}{out.stdout}")
        return out

    def apply(self, *objs: dict, namespace: str | None = None, server_side: bool = False) -> None:
        args = ["apply", "-f", "-"] + ([f"-n={namespace}"] if namespace else [])
        args += ["--server-side", "--force-conflicts"] if server_side else []
        self.kubectl(*args, input=yaml.safe_dump_all(objs))

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        out = self.kubectl("get", kind, name, "-o", "json", *([f"-n={namespace}"] if namespace else []),
                           check=False)
        if out.returncode != 0:
            if "NotFound" in out.stderr or "not found" in out.stderr:
                return None
            raise AssertionError(out.stderr)
        return json.loads(out.stdout)

    def items(self, kind: str, namespace: str | None, selector: str | None = None) -> list[dict]:
        args = ["get", kind, "-o", "json"] + ([f"-n={namespace}"] if namespace else ["-A"])
        args += [f"-l={selector}"] if selector else []
        return json.loads(self.kubectl(*args).stdout)["items"]

    def namespace(self, name: str, **labels: str) -> str:
        """Create (or keep) a namespace; one still terminating from an earlier run is waited out first."""
        wait(lambda: ((self.get("namespace", name) or {}).get("status") or {}).get("phase") != "Terminating",
             180, f"namespace {name} from an earlier run to be deleted", interval=1)
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
        wait(lambda: self.get("serviceaccount", "default", name), 60, f"namespace {name} ready")
        return name

    def delete_namespace(self, name: str) -> None:
        self.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)

    # ------------------------------------------------------------ diagnostics
    def dump(self, *namespaces: str) -> str:
        """What a person would look at: pods and their state, describe output, logs, Events."""
        parts = []
        for ns in namespaces:
            for args in (["get", "all,hm,pvc", "-o", "wide"], ["get", "events", "--sort-by=.lastTimestamp"],
                         ["describe", "pods"], ["get", "hm", "-o", "yaml"]):
                out = self.kubectl(*args, f"-n={ns}", check=False, timeout=60)
                parts.append(f"$ kubectl -n {ns} {' '.join(args)}\n{out.stdout[-20000:]}{out.stderr[-2000:]}")
            for pod in self.items("pods", ns) if self._ok(ns) else []:
                for c in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]:
                    out = self.kubectl("logs", f"-n={ns}", pod["metadata"]["name"], "-c", c["name"], "--tail=60",
                                       check=False, timeout=60)
                    parts.append(f"$ kubectl -n {ns} logs {pod['metadata']['name']} -c {c['name']}\n"
                                 f"{out.stdout}{out.stderr}")
        return "\n".join(parts)

    def _ok(self, ns: str) -> bool:
        return self.kubectl("get", "namespace", ns, check=False).returncode == 0

    # ----------------------------------------------------------- networking
    @contextlib.contextmanager
    def port_forward(self, namespace: str, target: str, port: int):
        """``kubectl port-forward`` to a Service or pod; yields the local port (127.0.0.1)."""
        local = _free_port()
        proc = subprocess.Popen([self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", "-n", namespace,
                                 "port-forward", target, f"{local}:{port}", "--address=127.0.0.1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait(lambda: _listening(local) or proc.poll() is not None, 30, f"port-forward {target}")
            if proc.poll() is not None:
                raise AssertionError(f"port-forward {target} exited: {proc.stderr.read()}")
            yield local
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    # ------------------------------------------------------------------ node
    def containerd(self, *args: str) -> subprocess.CompletedProcess:
        """ctr on the shared cluster's node (the tests' way to kill a container's process for real)."""
        return subprocess.run(["ctr", "--address", str(KUBE_HOME / "node/var/containerd/containerd.sock"),
                               "-n", "k8s.io", *args], capture_output=True, text=True, timeout=60)


def wait(predicate, timeout: float, what: str, interval: float = 0.5):
    """Poll ``predicate`` until it returns something truthy (returned); AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (AssertionError, KeyError, TypeError, IndexError, ValueError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})"[:3000])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


# ----------------------------------------------------------------- images
def images(cluster: Cluster) -> dict[str, str]:
    """{operator, trainer, server: image reference} usable by the cluster's pods."""
    names = ("operator", "trainer", "server")
    given = {n: os.environ.get(f"E2E_{n.upper()}_IMAGE") for n in names}
    if all(given.values()):
        return given  # type: ignore[return-value]
    if not cluster.shared:
        raise Unavailable("E2E_KUBECONFIG names a cluster that scripts/build-images cannot load images into: "
                          "build and load them, then set E2E_OPERATOR_IMAGE, E2E_TRAINER_IMAGE, E2E_SERVER_IMAGE")
    out_file = KUBE_HOME / "images" / "e2e-images.json"
    out = subprocess.run([str(ROOT / "scripts/build-images"), "--json", str(out_file)], capture_output=True,
                         text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"scripts/build-images failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    print(out.stdout)
    return {n: v["image"] for n, v in json.loads(out_file.read_text()).items()}


def build_image(name: str, dockerfile: pathlib.Path, context: pathlib.Path, *, base: str | None = None,
                timeout: float = 600) -> str:
    """Build a Dockerfile with the shared cluster's buildah helper (``build-image``), which also imports it into
    the node's containerd; returns the reference pods use (``localhost/NAME:TAG``). ``base``: the image its
    FROM names. buildah cannot pull it (no registry), so when its storage lacks it (an image that
    scripts/build-images reused from its archive) it is put there from that archive first."""
    env = {**os.environ, "KUBE_HOME": str(KUBE_HOME)}
    if base is not None:
        storage = KUBE_HOME / "buildah"
        buildah = ["buildah", "--root", str(storage / "storage"), "--runroot", str(storage / "run"),
                   "--storage-driver", "overlay"]
        benv = {**env, "TMPDIR": str(storage / "tmp")}
        if subprocess.run([*buildah, "inspect", "--type", "image", base], capture_output=True, env=benv,
                          timeout=120).returncode != 0:
            # build-image's archive name: the reference without localhost/, '/' and ':' as '_'
            archive = KUBE_HOME / "images" / (base.removeprefix("localhost/").replace("/", "_").replace(":", "_")
                                              + ".tar")
            out = subprocess.run([*buildah, "pull", "--quiet", f"oci-archive:{archive}"], capture_output=True,
                                 text=True, env=benv, timeout=timeout)
            if out.returncode == 0:  # named as it was pushed, or not at all: name it
                out = subprocess.run([*buildah, "tag", out.stdout.strip().splitlines()[-1], base],
                                     capture_output=True, text=True, env=benv, timeout=120)
            if out.returncode != 0:
                raise AssertionError(f"{base} is not in buildah's storage, and {archive} did not load: {out.stderr}")
    out = subprocess.run([str(KUBE_DIR / "build-image"), "-t", name, "-f", str(dockerfile), str(context)],
                         capture_output=True, text=True, env=env, timeout=timeout)
    if out.returncode != 0:
        raise AssertionError(f"build-image {name} failed ({out.returncode}):\n{out.stdout[-3000:]}\n"
                             f"{out.stderr[-3000:]}")
    first = name.split("/", 1)[0]
    if "/" not in name or ("." not in first and ":" not in first and first != "localhost"):
        name = f"localhost/{name}"
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def image_parts(ref: str) -> tuple[str, str]:
    repo, _, tag = ref.rpartition(":")
    return repo, tag


def helm(cluster: Cluster, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run([HELM, f"--kubeconfig={cluster.kubeconfig}", *args], capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)}: {out.stdout}{out.stderr}")
    return out


def install_operator(cluster: Cluster, image: str, *sets: str, verifier_image: str) -> None:
    """The chart, as a user installs it (`helm upgrade --install`), with the operator running in the cluster.

    The verify Jobs and the verify-model init containers run the chart's verifier.image, never the spec's
    serving image (issue 27); here that is the e2e server image, as the chart's default on ghcr.io cannot be
    pulled by the test cluster."""
    repo, tag = image_parts(image)
    if "@" in verifier_image:
        v_repo, v_digest = verifier_image.split("@", 1)
        verifier = ["--set", f"verifier.image.repository={v_repo}", "--set", f"verifier.image.digest={v_digest}"]
    else:
        v_repo, v_tag = image_parts(verifier_image)
        verifier = ["--set", f"verifier.image.repository={v_repo}", "--set-string", f"verifier.image.tag={v_tag}"]
    # Helm installs crds/ on the first install only and never upgrades them (docs/install.md says the same)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    helm(cluster, "upgrade", "--install", "hardened-model-operator", str(CHART), "--namespace", OPERATOR_NS,
         "--create-namespace", "--wait", "--timeout", "180s", "--set", f"image.repository={repo}",
         "--set-string", f"image.tag={tag}", *verifier, *[a for s in sets for a in ("--set", s)])
    if "admissionPolicy.enabled=false" not in sets:
        wait_for_admission(cluster)


def wait_for_admission(cluster: Cluster, namespace: str = OPERATOR_NS, timeout: float = 120) -> None:
    """Wait until the chart's ValidatingAdmissionPolicy answers for HardenedModels. Until the apiserver has
    synced the parameters of a policy whose paramKind CRD (HardenedModelPolicy) is new, it refuses every
    HardenedModel write ("failed to find resource referenced by paramKind"); ready is a server dry run of
    digits-demo admitted, or refused by a HardenedModelPolicy."""
    from helpers import example

    doc = example("digits-demo")
    doc["metadata"]["namespace"] = namespace
    manifest, last = yaml.safe_dump(doc), []

    def answers() -> bool:
        out = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=manifest, check=False)
        last[:] = [out.stderr]
        return out.returncode == 0 or "denied request: HardenedModelPolicy " in out.stderr

    try:
        wait(answers, timeout, "the admission policy to answer for HardenedModels", interval=1)
    except AssertionError:
        raise AssertionError(f"timed out after {timeout:.0f}s: a server dry run of digits-demo in {namespace} "
                             f"still fails: {last[0] if last else ''}") from None


def operator_pod(api: Cluster) -> dict | None:
    """The chart's operator pod that is not being deleted, if any."""
    pods = [p for p in api.items("pods", OPERATOR_NS, "app.kubernetes.io/name=hardened-model-operator")
            if not p["metadata"].get("deletionTimestamp")]
    return pods[0] if pods else None


def restart_operator(api: Cluster, timeout: float = 180) -> None:
    """Delete the operator's pod and wait until its replacement is Ready."""
    old = operator_pod(api)
    api.kubectl("-n", OPERATOR_NS, "delete", "pod", old["metadata"]["name"], "--wait=false")
    wait(lambda: (operator_pod(api) or {}).get("metadata", {}).get("name") not in (None, old["metadata"]["name"])
         and any(c["type"] == "Ready" and c["status"] == "True"
                 for c in operator_pod(api)["status"].get("conditions", [])), timeout, "a new operator pod Ready")


def hostpath_store(api: Cluster, namespace: str, pv: str, signing_secret: str) -> pathlib.Path:
    """A namespace's pvc://hardened-models as a ReadWriteOnce hostPath volume (there is no provisioner here),
    owned by the pods' uid 65532 (hostPath volumes get no fsGroup), and a signing key pair in
    ``signing_secret``; the folder on this machine."""
    from hardened_model.signing import generate_key_pem

    store = KUBE_HOME / pv
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    os.chown(store, 65532, 65532)
    api.kubectl("delete", "pv", pv, "--ignore-not-found", "--wait=true")
    api.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
               "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                        "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(store)},
                        "claimRef": {"namespace": namespace, "name": "hardened-models"}}})
    private, public = generate_key_pem()
    api.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "hardened-models"},
               "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": pv,
                        "resources": {"requests": {"storage": "1Gi"}}}},
              {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": signing_secret},
               "stringData": {"private.pem": private, "public.pem": public}}, namespace=namespace)
    return store
