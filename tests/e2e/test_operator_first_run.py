"""Issue 20 on a real API server: `hardened-model operator` run from a workstation, as a new user runs it.

- no flags, no peering object: standalone, says so, reconciles a new HardenedModel within 5 s;
- `--peering missing-name`: exits non-zero at once, naming the object and how to create it;
- two operators in peering mode, with the chart's HA RBAC as their identity (a ServiceAccount token, so the
  real RBAC authorizer checks every request): exactly one reconciles; killed, the other takes over within
  the 30 s alive-record lifetime, and no Job is made twice.
The in-cluster operator (if another e2e module installed it) is scaled to 0 meanwhile. Training pods are
kept Pending by a nodeSelector nothing matches: these tests are about the operator, not the training.
"""
import base64
import os
import signal
import subprocess
import time

import pytest
import yaml

from cluster import CHART, HELM, OPERATOR_NS, Cluster, wait, wait_for_admission
from helpers import ROOT, free_port

NS = "e2e-first-run"
DUMP_NAMESPACES = [NS]
PEERS = "e2e-peers"  # the namespace of the ServiceAccount the two peering operators run as


@pytest.fixture(scope="module")
def api(cluster: Cluster):
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/hardenedmodels.hardened.dev",
                    "crd/clusterkopfpeerings.kopf.dev", "--timeout=60s")
    if cluster.get("validatingadmissionpolicy", "hardened-model-operator"):  # the chart's, re-synced to the CRDs
        wait_for_admission(cluster)
    cluster.kubectl("delete", "clusterkopfpeering", "hardened-model", "--ignore-not-found")
    cluster.namespace(NS)
    cluster.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": "hardened-models", "namespace": NS},
                   "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                            "resources": {"requests": {"storage": "1Gi"}}}})
    dep = cluster.get("deployment", "hardened-model-operator", OPERATOR_NS)
    replicas = (dep or {}).get("spec", {}).get("replicas")
    if replicas:  # one operator per cluster: the chart's, if installed, stands aside
        cluster.kubectl("-n", OPERATOR_NS, "scale", "deployment/hardened-model-operator", "--replicas=0")
        wait(lambda: not cluster.items("pods", OPERATOR_NS, "app.kubernetes.io/instance=hardened-model-operator"),
             90, "the in-cluster operator stopped")
    yield cluster
    cluster.kubectl("delete", "clusterkopfpeering", "hardened-model", "--ignore-not-found", check=False)
    if replicas:
        cluster.kubectl("-n", OPERATOR_NS, "scale", "deployment/hardened-model-operator", f"--replicas={replicas}")
    cluster.delete_namespace(NS)
    cluster.delete_namespace(PEERS)


def model(name: str) -> dict:
    """A small spec whose training pod never starts (nodeSelector), with generated keys."""
    return {"apiVersion": "hardened.dev/v1alpha1", "kind": "HardenedModel",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"model": {"architecture": "cnn-8x8", "inputShape": [1, 8, 8], "numClasses": 10},
                     "data": {"source": "builtin:digits"},
                     "training": {"epochs": 1, "nodeSelector": {"hardened.dev/e2e": "never"}},
                     "serving": {"replicas": 1}}}


def train_jobs(api: Cluster, name: str) -> list[dict]:
    return api.items("jobs", NS, f"hardened.dev/model={name},app.kubernetes.io/component=training")


class Operator:
    """`hardened-model operator` as a process on this machine, its output in a file."""

    def __init__(self, tmp, name: str, *args: str, kubeconfig, env: dict | None = None):
        self.log = tmp / f"{name}.log"
        self.proc = subprocess.Popen([str(ROOT / ".venv/bin/hardened-model"), "operator", *args],
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                     env={**os.environ, "KUBECONFIG": str(kubeconfig), "POD_ID": name,
                                          "HARDENED_RETRY_SECONDS": "2", **(env or {})})

    def output(self) -> str:
        return self.log.read_text()

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def test_no_flags_without_a_peering_object_runs_standalone_and_reconciles(api, tmp_path):
    op = Operator(tmp_path, "solo", kubeconfig=api.kubeconfig)  # literally no flags
    try:
        wait(lambda: "Peering: standalone: no ClusterKopfPeering 'hardened-model'" in op.output()
             and "Initial authentication has finished" in op.output(), 60, "the operator to start")
        time.sleep(1)  # its watches are listed
        t0 = time.monotonic()
        api.apply(model("solo"))
        # the 5 s goal is benchmarks/cluster_figures.py's, on an idle node (docs/benchmarks.md: p50
        # 0.16 s, max 0.96 s); a test on a busy node checks that it reconciles, and prints how long it took
        wait(lambda: train_jobs(api, "solo"), 30, "the training Job", interval=0.1)
        took = time.monotonic() - t0
        hm = wait(lambda: (api.get("hm", "solo", NS) or {}).get("status", {}).get("phase"), 30, "status")
        assert hm == "Training", hm
        print(f"apply -> training Job: {took:.2f}s")
    finally:
        op.stop()
    assert op.proc.returncode == 0, op.output()[-3000:]


def test_an_explicit_peering_that_does_not_exist_fails_fast_and_says_how_to_create_it(api, tmp_path):
    out = subprocess.run([str(ROOT / ".venv/bin/hardened-model"), "operator", "--peering", "missing-name"],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "KUBECONFIG": str(api.kubeconfig)})
    assert out.returncode == 2, out.stdout + out.stderr
    assert "--peering missing-name: ClusterKopfPeering 'missing-name' not found" in out.stderr
    assert "kubectl apply -f charts/hardened-model-operator/crds/kopf-peerings.yaml" in out.stderr
    assert "kind: ClusterKopfPeering" in out.stderr and "name: missing-name" in out.stderr


def token_kubeconfig(api: Cluster, tmp) -> "os.PathLike":
    """A kubeconfig that authenticates as the ServiceAccount of the chart's HA mode (its real RBAC)."""
    rendered = subprocess.run([HELM, "template", PEERS, str(CHART), "--namespace", PEERS, "--set", "replicas=2"],
                              capture_output=True, text=True, check=True).stdout
    objs = [o for o in yaml.safe_load_all(rendered) if o and o["kind"] in (
        "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering")]
    assert [o["kind"] for o in objs].count("ClusterKopfPeering") == 1
    api.namespace(PEERS)
    api.apply(*objs)
    sa = next(o["metadata"]["name"] for o in objs if o["kind"] == "ServiceAccount")
    token = api.kubectl("-n", PEERS, "create", "token", sa, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(api.kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    ca = cluster.get("certificate-authority-data") or base64.b64encode(
        open(cluster["certificate-authority"], "rb").read()).decode()
    path = tmp / "peer.kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "peer",
        "clusters": [{"name": "c", "cluster": {"server": cluster["server"], "certificate-authority-data": ca}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "peer", "context": {"cluster": "c", "user": "sa"}}]}))
    return path


def handled(op: Operator, name: str) -> bool:
    return f"[{NS}/{name}] Handler 'on_change" in op.output()


def test_two_peering_operators_one_reconciles_and_the_other_takes_over(api, tmp_path):
    kubeconfig = token_kubeconfig(api, tmp_path)
    ports = lambda: ["--health-port", str(free_port()), "--metrics-port", str(free_port())]  # noqa: E731
    a = Operator(tmp_path, "op-a", *ports(), kubeconfig=kubeconfig)
    b = None
    try:
        wait(lambda: "Peering: peering through ClusterKopfPeering 'hardened-model'" in a.output(), 60, "a peering")
        time.sleep(2)
        b = Operator(tmp_path, "op-b", *ports(), kubeconfig=kubeconfig)  # younger: lower priority, a standby
        wait(lambda: "stands by otherwise" in b.output(), 60, "b to start")
        peers = lambda: set((api.get("clusterkopfpeering", "hardened-model") or {}).get("status") or {})  # noqa
        wait(lambda: peers() == {"op-a", "op-b"}, 30, "both alive-records in the peering object")
        api.apply(model("peer-one"))
        wait(lambda: train_jobs(api, "peer-one"), 30, "the leader to reconcile")
        wait(lambda: handled(a, "peer-one"), 30, "a's handler for peer-one to finish")
        time.sleep(5)  # enough for a second operator to act, if it were going to
        assert not handled(b, "peer-one"), (a.output()[-2000:], b.output()[-2000:])

        a.stop(signal.SIGKILL)  # dies without removing its alive-record
        killed = time.monotonic()
        api.apply(model("peer-two"))
        wait(lambda: train_jobs(api, "peer-two"), 45, "b to take over")
        took = time.monotonic() - killed
        assert took <= 60, took  # issue 20: within 60 s (the record's lifetime is 30 s)
        assert "Resuming operations after the pause" in b.output()
        # kopf logs "Handler ... succeeded" after the handler returns and its status patch lands, which on a busy
        # node can be seconds after the Job it made appears
        wait(lambda: handled(b, "peer-two"), 30, "b's handler for peer-two to finish")
        time.sleep(3)  # b also resumed peer-one: it must find the Job, not make a second
        assert len(train_jobs(api, "peer-one")) == 1 and len(train_jobs(api, "peer-two")) == 1
        assert "Forbidden" not in b.output() and " 403" not in b.output(), b.output()[-3000:]
        print(f"takeover after SIGKILL: {took:.1f}s")
    finally:
        a.stop(signal.SIGKILL)
        if b is not None:
            b.stop()
