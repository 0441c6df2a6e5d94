"""kmock (an HTTP Kubernetes API emulator) made kopf-ready, after ../shared/examples/kmock-kopf.

kmock 0.8 stores bodies as sent; ``RVEmulator`` assigns what a real API server
assigns (uid, resourceVersion, creationTimestamp, generation, and a generation
bump when the spec changes), without which kopf re-runs handlers and
ownerReferences lack a uid. kmock has no controllers, garbage collection or
label selectors: the tests play the Job and Deployment controllers.
"""
import asyncio
import dataclasses
import datetime
import itertools
import re
import time
import uuid

import aiohttp.web
import kmock
import yaml

_rv = itertools.count(1000)


@dataclasses.dataclass
class Fault:
    """Answer the next ``times`` requests matching ``method`` and ``path`` (a regular expression) with ``status``
    instead of serving them; status 0 drops the connection (for a watch: the stream ends)."""
    method: str
    path: str
    status: int
    times: int = 1
    hits: int = 0


class RVEmulator(kmock.KubernetesEmulator):
    faults: list = []
    namespaces: dict = {}

    def add_namespace(self, name: str, **labels: str) -> dict:
        """A Namespace with these labels (what HardenedModelPolicies select by). kmock 0.8 reads
        /api/v1/namespaces/NAME as a list of a resource called NAME, so Namespaces are served here."""
        obj = {"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": name, "labels": labels, "uid": str(uuid.uuid4()),
                            "resourceVersion": str(next(_rv))}}
        self.namespaces = {**self.namespaces, name: obj}
        return obj

    def _namespace(self, request):
        method = str(getattr(request.method, "value", request.method)).upper()
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)", request.url.path)
        if method != "GET" or m is None:
            return None
        if m[1] in self.namespaces:
            return aiohttp.web.json_response(self.namespaces[m[1]])
        return aiohttp.web.json_response({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 404,
                                          "reason": "NotFound", "message": f'namespaces "{m[1]}" not found'},
                                         status=404)

    def inject(self, method: str, path: str, status: int, times: int = 1) -> Fault:
        fault = Fault(method, path, status, times)
        self.faults = [*self.faults, fault]
        return fault

    def _fault_for(self, request):
        method = str(getattr(request.method, "value", request.method)).upper()
        for fault in self.faults:
            if fault.hits < fault.times and fault.method == method and re.search(fault.path, str(request.url)):
                fault.hits += 1
                return fault
        return None

    async def _handle(self, request):
        fault = self._fault_for(request) if self.faults else None
        if fault is not None:
            if fault.status == 0:
                return aiohttp.web.Response(status=200, body=b"")  # a watch stream that ends at once
            reason = {409: "Conflict", 500: "InternalError", 503: "ServiceUnavailable"}.get(fault.status, "Error")
            return aiohttp.web.json_response({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                                              "code": fault.status, "reason": reason,
                                              "message": f"injected {fault.status}"}, status=fault.status)
        served = self._namespace(request)
        if served is not None:
            return served
        data = request.data
        if request.resource is not None:
            if request.action == kmock.action.CREATE and isinstance(data, dict):
                meta = data.setdefault("metadata", {})
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp",
                                datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
                meta.setdefault("generation", 1)
                meta["resourceVersion"] = str(next(_rv))
            elif request.action == kmock.action.UPDATE and request.name is not None:
                if isinstance(data, dict):
                    meta = data.setdefault("metadata", {})
                    meta["resourceVersion"] = str(next(_rv))
                    if "spec" in data and request.subresource is None:
                        try:
                            current = self.objects[request.resource, request.namespace, request.name]
                            meta["generation"] = int(current.get("metadata", {}).get("generation", 1)) + 1
                        except KeyError:
                            pass
        return await super()._handle(request)


VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}
CORE = [("v1/namespaces", "Namespace", False), ("v1/configmaps", "ConfigMap", True), ("v1/secrets", "Secret", True),
        ("v1/services", "Service", True), ("v1/pods", "Pod", True), ("v1/events", "Event", True),
        ("v1/persistentvolumeclaims", "PersistentVolumeClaim", True),
        ("monitoring.coreos.com/v1/servicemonitors", "ServiceMonitor", True),
        ("monitoring.coreos.com/v1/prometheusrules", "PrometheusRule", True),
        ("batch/v1/jobs", "Job", True), ("apps/v1/deployments", "Deployment", True),
        ("networking.k8s.io/v1/networkpolicies", "NetworkPolicy", True),
        ("policy/v1/poddisruptionbudgets", "PodDisruptionBudget", True),
        ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", False)]


def declare(k8s) -> None:
    k8s.resources["hardened.dev/v1alpha1/hardenedmodels"] = k8s.ResourceInfo(
        kind="HardenedModel", singular="hardenedmodel", namespaced=True, verbs=VERBS, subresources={"status"})
    k8s.resources["hardened.dev/v1alpha1/hardenedmodelpolicies"] = k8s.ResourceInfo(  # cluster-scoped (issue 27)
        kind="HardenedModelPolicy", singular="hardenedmodelpolicy", namespaced=False, verbs=VERBS)
    for path, kind, namespaced in CORE:
        k8s.resources[path] = k8s.ResourceInfo(kind=kind, singular=kind.lower(), namespaced=namespaced, verbs=VERBS)


def write_kubeconfig(path, url: str) -> None:
    cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "kmock",
           "clusters": [{"name": "kmock", "cluster": {"server": url.rstrip("/")}}],
           "users": [{"name": "u", "user": {"token": "test-token"}}],
           "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "u", "namespace": "default"}}]}
    path.write_text(yaml.safe_dump(cfg))


def alive(objects, key) -> bool:
    try:
        return not objects[key].deleted
    except KeyError:
        return False


def get(objects, key) -> dict | None:
    return dict(objects[key]) if alive(objects, key) else None


async def wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except (KeyError, TypeError):
            pass
        await asyncio.sleep(0.1)  # yields to the kmock server in this loop
    return False
