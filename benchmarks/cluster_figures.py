"""Figures of the operator on a real cluster (issue 14), with the chart's operator running in the cluster.

    .venv/bin/python benchmarks/cluster_figures.py [--models 100] [--applies 20] [--quiet-seconds 120] [--smoke]

Uses the same cluster and images as the e2e suite (tests/e2e/cluster.py: E2E_KUBECONFIG, or ../shared/kube
started as root; images from scripts/build-images). In namespace bench-figures it measures:

1. apply -> training Job created: ``--applies`` distinct HardenedModels, one at a time, each timed from the
   create call's answer to the Job being readable (p50 and max);
2. the operator's memory (VmRSS of its process, read in the pod) with no model and with ``--models``
   HardenedModels, each with its training Job; their training never starts (a nodeSelector no node matches),
   so the figure is the operator's and not 100 trainings';
3. writes by the operator in steady state: after every model has settled, for ``--quiet-seconds`` no object
   the operator manages may change through the operator's field managers (managedFields time) and kopf may
   post no Event; the apiserver's own counter of PATCHes to hardenedmodels (only the operator patches them)
   must not move either.
The digits-demo apply -> Ready figure comes from tests/e2e/test_digits_demo.py (it trains for real).
"""
from __future__ import annotations

import datetime
import json
import re
import statistics
import sys
import time

from common import ROOT, smoke_parser  # (common also puts tests/ on sys.path)

sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from cluster import OPERATOR_NS, Cluster, images, install_operator, wait  # noqa: E402

NS = "bench-figures"
OPERATOR_MANAGERS = ("kopf", "OpenAPI-Generator")  # kopf's client and the kubernetes client (kube.py)
MANAGED = "jobs,configmaps,services,networkpolicies,poddisruptionbudgets,deployments,secrets"


def model(name: str) -> dict:
    return {"apiVersion": "hardened.dev/v1alpha1", "kind": "HardenedModel",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"model": {"architecture": "cnn-8x8", "inputShape": [1, 8, 8], "numClasses": 10},
                     "data": {"source": "builtin:digits"}, "serving": {"replicas": 1},
                     "training": {"nodeSelector": {"hardened.dev/bench": "never"}}}}


def operator_rss_mib(api: Cluster) -> float:
    pod = api.items("pods", OPERATOR_NS, "app.kubernetes.io/name=hardened-model-operator")[0]["metadata"]["name"]
    text = api.kubectl("-n", OPERATOR_NS, "exec", pod, "--", "cat", "/proc/1/status").stdout
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) / 1024


def hm_patches(api: Cluster) -> float:
    text = api.kubectl("get", "--raw", "/metrics").stdout
    return sum(float(m.group(1)) for m in re.finditer(
        r'^apiserver_request_total\{[^}]*resource="hardenedmodels"[^}]*verb="PATCH"[^}]*\} (\S+)$', text, re.M))


def operator_writes_since(api: Cluster, since: datetime.datetime) -> list[str]:
    """Objects in NS that one of the operator's field managers wrote after ``since``, and kopf's Events."""
    out = []
    objs = json.loads(api.kubectl("-n", NS, "get", f"hardenedmodels,{MANAGED}", "-o", "json",
                                  "--show-managed-fields").stdout)["items"]
    for obj in objs:
        for mf in obj["metadata"].get("managedFields", []):
            at = datetime.datetime.fromisoformat(mf["time"].replace("Z", "+00:00"))
            if mf["manager"].startswith(OPERATOR_MANAGERS) and at >= since:
                out.append(f"{obj['kind']}/{obj['metadata']['name']} by {mf['manager']} at {mf['time']}")
    for ev in json.loads(api.kubectl("-n", NS, "get", "events", "-o", "json").stdout)["items"]:
        stamp = ev.get("lastTimestamp") or ev.get("eventTime") or ev["metadata"]["creationTimestamp"]
        if (ev.get("reportingComponent") == "kopf" or (ev.get("source") or {}).get("component") == "kopf") and \
                datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")) >= since:
            out.append(f"Event {ev['reason']} on {ev['involvedObject']['name']}")
    return out


def main() -> int:
    parser = smoke_parser(__doc__.split("\n\n")[0] + " (--smoke: 2 applies, 3 models, 5 quiet seconds)")
    parser.add_argument("--applies", type=int, default=20, help="models timed one by one (default: 20)")
    parser.add_argument("--models", type=int, default=100, help="models for the memory figure (default: 100)")
    parser.add_argument("--quiet-seconds", type=int, default=120, help="steady-state window (default: 120)")
    args = parser.parse_args()
    if args.smoke:
        args.applies, args.models, args.quiet_seconds = 2, 3, 5

    api = Cluster.find_or_start()
    built = images(api)
    install_operator(api, built["operator"], verifier_image=built["server"])
    api.delete_namespace(NS)
    api.namespace(NS)
    api.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "hardened-models"},
               "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "",
                        "resources": {"requests": {"storage": "1Gi"}}}}, namespace=NS)
    # a fresh operator process: its memory is then the figure of this run alone
    api.kubectl("-n", OPERATOR_NS, "rollout", "restart", "deployment/hardened-model-operator")
    api.kubectl("-n", OPERATOR_NS, "rollout", "status", "deployment/hardened-model-operator", "--timeout=120s",
                timeout=150)
    wait(lambda: len(api.items("pods", OPERATOR_NS, "app.kubernetes.io/name=hardened-model-operator")) == 1, 120,
         "the old operator pod gone")
    time.sleep(10)
    base_rss = operator_rss_mib(api)

    from kubernetes import client, config

    config.load_kube_config(str(api.kubeconfig))
    custom, batch = client.CustomObjectsApi(), client.BatchV1Api()
    delays = []
    for i in range(args.applies):
        name = f"apply-{i:03d}"
        t0 = time.monotonic()
        custom.create_namespaced_custom_object("hardened.dev", "v1alpha1", NS, "hardenedmodels", model(name))
        created = time.monotonic()
        wait(lambda: batch.list_namespaced_job(NS, label_selector=f"hardened.dev/model={name}").items, 60,
             f"the Job of {name}", interval=0.02)
        delays.append(time.monotonic() - created)
        del t0
    for i in range(args.applies, args.models):
        custom.create_namespaced_custom_object("hardened.dev", "v1alpha1", NS, "hardenedmodels",
                                               model(f"apply-{i:03d}"))

    def settled():
        items = custom.list_namespaced_custom_object("hardened.dev", "v1alpha1", NS, "hardenedmodels")["items"]
        return len(items) == args.models and all((i.get("status") or {}).get("phase") == "Training" for i in items)
    t_settle = time.monotonic()
    wait(settled, 600, f"{args.models} models in phase Training", interval=2)
    settle_s = time.monotonic() - t_settle
    time.sleep(15)  # the last Events and watch bookmarks
    rss = operator_rss_mib(api)

    # managedFields times have whole seconds: count from the start of the current second (a write just before
    # the window may count, one inside it cannot be missed)
    since = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    patches_before = hm_patches(api)
    time.sleep(args.quiet_seconds)
    writes = operator_writes_since(api, since)
    patches = hm_patches(api) - patches_before
    rss_after = operator_rss_mib(api)
    # the instrument's control: a spec change must show up as the operator's writes
    time.sleep(1.1)
    control_since = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    custom.patch_namespaced_custom_object("hardened.dev", "v1alpha1", NS, "hardenedmodels", "apply-000",
                                          {"spec": {"training": {"epochs": 2}}})
    control = wait(lambda: operator_writes_since(api, control_since), 30, "the control's writes")

    print(f"apply -> training Job, {args.applies} models one by one: p50 {statistics.median(delays):.2f} s, "
          f"max {max(delays):.2f} s")
    print(f"operator VmRSS: {base_rss:.1f} MiB with no model, {rss:.1f} MiB with {args.models} models "
          f"({rss_after:.1f} MiB {args.quiet_seconds} s later); the last {args.models - args.applies} created "
          f"at once settled in {settle_s:.1f} s")
    print(f"steady state, {args.quiet_seconds} s: {len(writes)} writes by the operator's field managers or kopf "
          f"Events, {patches:.0f} PATCHes of hardenedmodels at the apiserver")
    for w in writes[:20]:
        print("  ", w)
    print(f"control: a spec change afterwards showed {len(control)} writes (e.g. {control[0]})")
    api.delete_namespace(NS)
    return 0 if not writes and not patches else 1


if __name__ == "__main__":
    sys.exit(main())
