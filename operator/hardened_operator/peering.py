"""Which kopf peering mode `hardened-model operator` runs in (issue 20).

kopf with ``--peering=NAME`` waits, silently and forever, for a KopfPeering
object that nothing created. So the operator looks before it starts:

- no flag: peering ``hardened-model`` when its object exists (the Helm chart's
  HA mode creates it), standalone otherwise; either way it says which (INFO);
- ``--peering NAME``: that object must exist, else exit 2 naming it and how to
  create it;
- ``--standalone``: no peering, no look.

With several replicas only one may reconcile. kopf pauses an operator that
sees a live peer of higher priority, and pauses *both* on equal priorities,
so each process needs a distinct one: the default is derived from the start
time (earlier start, higher priority), so the oldest replica leads, a new one
joins as a standby, and the standby takes over when the leader stops (at once
on a clean exit, which removes its record; within the record's 30 s lifetime
when it dies hard).
"""
from __future__ import annotations

import dataclasses
import time

DEFAULT_NAME = "hardened-model"
LIFETIME_SECONDS = 30  # of an alive-record: a standby takes over at most this long after the leader died
GROUP, VERSION = "kopf.dev", "v1"
CRD_FILE = "charts/hardened-model-operator/crds/kopf-peerings.yaml"


class PeeringMissing(Exception):
    """An explicitly named peering object does not exist."""


@dataclasses.dataclass(frozen=True)
class Peering:
    kopf_args: tuple[str, ...]
    note: str  # logged at start-up


def default_priority(now_ns: int | None = None) -> int:
    """Earlier start, higher priority; microseconds, so two replicas started together still differ."""
    return 2**62 - (time.time_ns() if now_ns is None else now_ns) // 1000


def _what(name: str, namespaces: list[str] | None) -> str:
    return (f"ClusterKopfPeering {name!r}" if not namespaces
            else f"KopfPeering {name!r} in namespace(s) {', '.join(namespaces)}")


def how_to_create(name: str, namespaces: list[str] | None) -> str:
    kind = "ClusterKopfPeering" if not namespaces else "KopfPeering"
    objects = "".join(f"  ---\n  apiVersion: {GROUP}/{VERSION}\n  kind: {kind}\n  metadata: {{name: {name}"
                      + (f", namespace: {ns}" if ns else "") + "}\n" for ns in (namespaces or [None]))
    return (f"create it (the Helm chart does with replicas >= 2):\n"
            f"  kubectl apply -f {CRD_FILE}     # kopf's peering CRDs, once\n"
            f"  kubectl apply -f - <<EOF\n{objects}  EOF\n"
            "or run a single operator with --standalone")


def exists(api_client, name: str, namespaces: list[str] | None) -> bool:
    """Whether the peering object exists (in every watched namespace); False when its CRD is missing too, and
    when reading it is forbidden (the chart's standalone RBAC grants no peering access)."""
    import kubernetes
    from kubernetes.client.exceptions import ApiException

    api = kubernetes.client.CustomObjectsApi(api_client)
    try:
        if not namespaces:
            api.get_cluster_custom_object(GROUP, VERSION, "clusterkopfpeerings", name)
        for ns in namespaces or []:
            api.get_namespaced_custom_object(GROUP, VERSION, ns, "kopfpeerings", name)
    except ApiException as exc:
        if exc.status in (403, 404):
            return False
        raise
    return True


def decide(*, standalone: bool, name: str | None, namespaces: list[str] | None, priority: int | None,
           lookup) -> Peering:
    """The kopf arguments for the peering mode. ``lookup(name, namespaces) -> bool`` reads the cluster."""
    if standalone:
        return Peering(("--standalone",), "standalone (--standalone): this must be the only operator running")
    wanted = name or DEFAULT_NAME
    if not lookup(wanted, namespaces):
        if name:
            raise PeeringMissing(f"--peering {name}: {_what(name, namespaces)} not found; kopf would wait for it "
                                 f"and reconcile nothing. To run with peering, {how_to_create(name, namespaces)}")
        return Peering(("--standalone",), f"standalone: no {_what(wanted, namespaces)} (the Helm chart's HA mode "
                                          "creates it); run only one operator")
    prio = default_priority() if priority is None else priority
    return Peering((f"--peering={wanted}", f"--priority={prio}"),
                   f"peering through {_what(wanted, namespaces)} with priority {prio}: this operator reconciles "
                   "only while it is the live one with the highest priority, and stands by otherwise (kopf "
                   "logs 'Resuming operations' when it takes over)")


CHOSEN: Peering | None = None  # what `hardened-model operator` decided; handlers.py logs it at start-up
