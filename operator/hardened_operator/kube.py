"""The one funnel for Kubernetes API calls (as crate-operator's call_kubeapi).

- ``ensure``: create; a 409 means it exists, which is success. Then, if the
  desired fields differ from what is there, one merge patch; otherwise no write.
  Jobs are never patched (their template is immutable; a new version is a new Job).
- ``get`` returns plain dicts exactly as the API server sent them (no model
  classes), or None on 404.
Every other module stays free of API calls, so the builders and the status
logic are pure and tested without a cluster.
"""
from __future__ import annotations

import json
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

# kind -> (API class, method suffix)
_TYPED = {
    "ConfigMap": ("CoreV1Api", "namespaced_config_map"),
    "Secret": ("CoreV1Api", "namespaced_secret"),
    "Service": ("CoreV1Api", "namespaced_service"),
    "Pod": ("CoreV1Api", "namespaced_pod"),
    "PersistentVolumeClaim": ("CoreV1Api", "namespaced_persistent_volume_claim"),
    "Job": ("BatchV1Api", "namespaced_job"),
    "Deployment": ("AppsV1Api", "namespaced_deployment"),
    "NetworkPolicy": ("NetworkingV1Api", "namespaced_network_policy"),
    "PodDisruptionBudget": ("PolicyV1Api", "namespaced_pod_disruption_budget"),
}
_CUSTOM = {"ServiceMonitor": ("monitoring.coreos.com", "v1", "servicemonitors"),
           "PrometheusRule": ("monitoring.coreos.com", "v1", "prometheusrules"),
           "HardenedModel": ("hardened.dev", "v1alpha1", "hardenedmodels")}
# cluster-scoped kinds the operator reads: a model's Namespace (its labels select policies), and the policies
_CLUSTER_TYPED = {"Namespace": ("CoreV1Api", "namespace")}
_CLUSTER_CUSTOM = {"HardenedModelPolicy": ("hardened.dev", "v1alpha1", "hardenedmodelpolicies")}
IMMUTABLE = {"Job", "Pod"}


def load_config() -> None:
    """The credentials kopf's login uses too: the pod's service account in a cluster, else the kubeconfig."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()


class Conflict(Exception):
    """A write that must be retried by a later pass (the caller turns it into a kopf TemporaryError)."""


class Kube:
    def __init__(self, api_client: kubernetes.client.ApiClient | None = None):
        self.client = api_client or kubernetes.client.ApiClient()
        self.writes = 0  # for tests and metrics: no change must mean no writes

    def _api(self, name: str):
        return getattr(kubernetes.client, name)(self.client)

    @staticmethod
    def _body(resp) -> dict:
        return json.loads(resp.data)

    def _call(self, verb: str, kind: str, namespace: str | None, name: str | None = None, body: dict | None = None):
        """One dispatch for typed and custom kinds (their client methods order arguments differently)."""
        tail = ([name] if name is not None else []) + ([body] if body is not None else [])
        if kind in _CLUSTER_TYPED:
            api, suffix = _CLUSTER_TYPED[kind]
            return self._body(getattr(self._api(api), f"{verb}_{suffix}")(*tail, _preload_content=False))
        if kind in _CUSTOM:
            g, v, p = _CUSTOM[kind]
            custom_verb = "get" if verb == "read" else verb
            return getattr(self._api("CustomObjectsApi"), f"{custom_verb}_namespaced_custom_object")(
                g, v, namespace, p, *tail)
        api, suffix = _TYPED[kind]
        args = ([name, namespace] if name is not None else [namespace]) + ([body] if body is not None else [])
        return self._body(getattr(self._api(api), f"{verb}_{suffix}")(*args, _preload_content=False))

    # ----------------------------------------------------------------- read
    def get(self, kind: str, namespace: str | None, name: str) -> dict | None:
        """``namespace`` None for a cluster-scoped kind (a Namespace)."""
        try:
            return self._call("read", kind, namespace, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str, labels: dict[str, str]) -> list[dict]:
        """Objects whose labels include ``labels`` (filtered here too: not every server filters)."""
        api, suffix = _TYPED[kind]
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        items = self._body(getattr(self._api(api), f"list_{suffix}")(namespace, label_selector=selector,
                                                                      _preload_content=False)).get("items", [])
        return [i for i in items if labels.items() <= (i.get("metadata", {}).get("labels") or {}).items()]

    def list_cluster(self, kind: str) -> list[dict]:
        """Every object of a cluster-scoped custom kind; none when its CRD is not installed (404: then none can
        exist). A 403 is raised: a policy the operator may not read must stop the pass, not be skipped."""
        g, v, p = _CLUSTER_CUSTOM[kind]
        try:
            return self._api("CustomObjectsApi").list_cluster_custom_object(g, v, p).get("items") or []
        except ApiException as exc:
            if exc.status == 404:
                return []
            raise

    def crd_exists(self, name: str) -> bool:
        try:
            self._api("ApiextensionsV1Api").read_custom_resource_definition(name, _preload_content=False)
            return True
        except ApiException as exc:
            if exc.status in (404, 403):
                return False
            raise

    # ---------------------------------------------------------------- write
    def create(self, obj: dict) -> dict | None:
        """Create; None when it already exists (409)."""
        try:
            self.writes += 1
            return self._call("create", obj["kind"], obj["metadata"]["namespace"], body=obj)
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise

    def patch(self, kind: str, namespace: str, name: str, patch: dict) -> dict:
        self.writes += 1
        return self._call("patch", kind, namespace, name, patch)

    def patch_status(self, kind: str, namespace: str, name: str, status: dict) -> dict:
        """Merge-patch the status subresource of one of our custom objects."""
        self.writes += 1
        g, v, p = _CUSTOM[kind]
        return self._api("CustomObjectsApi").patch_namespaced_custom_object_status(g, v, namespace, p, name,
                                                                                   {"status": status})

    def ensure(self, obj: dict) -> str:
        """Make ``obj`` exist as built: 'created', 'patched' or 'unchanged'."""
        kind, ns, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
        existing = self.get(kind, ns, name)
        if existing is None:
            if self.create(obj) is not None:
                return "created"
            existing = self.get(kind, ns, name)  # lost a race: someone created it meanwhile
            if existing is None:  # 409, yet not there (an object of that name still being deleted): not done
                raise Conflict(f"{kind} {ns}/{name}: create answered 409 (AlreadyExists) but it cannot be read")
        if kind in IMMUTABLE:
            return "unchanged"
        desired = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "status")}
        desired["metadata"] = {k: obj["metadata"][k] for k in ("labels", "annotations", "ownerReferences")
                               if k in obj["metadata"]}
        if is_subset(desired, existing):
            return "unchanged"
        self.patch(kind, ns, name, desired)
        return "patched"


def is_subset(desired: Any, actual: Any) -> bool:
    """Every field we set is there with our value (servers add defaults; those do not count as drift)."""
    if isinstance(desired, dict):
        return isinstance(actual, dict) and all(k in actual and is_subset(v, actual[k]) for k, v in desired.items())
    if isinstance(desired, list):
        return (isinstance(actual, list) and len(desired) == len(actual)
                and all(is_subset(d, a) for d, a in zip(desired, actual)))
    if isinstance(desired, (int, float)) and isinstance(actual, str) or isinstance(desired, str) and isinstance(
            actual, (int, float)):
        return str(desired) == str(actual)  # quantities and int-or-string ports come back either way
    return desired == actual


def job_pods(kube: Kube, namespace: str, job_name: str) -> list[dict]:
    """The Job's pods, newest first."""
    pods = kube.list("Pod", namespace, {"job-name": job_name})
    pods.sort(key=lambda p: p.get("metadata", {}).get("creationTimestamp") or "", reverse=True)
    return pods


def _parse_termination(text: str):
    """A termination log as its writer's JSON, or its last 1000 characters as the message (a crash's)."""
    try:
        return json.loads(text)
    except ValueError:
        return {"message": text[-1000:]}


def termination_message(pods: list[dict]) -> dict | None:
    """The JSON the newest finished pod of a Job (``job_pods``) wrote to /dev/termination-log, if any."""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = ((cs.get("state") or {}).get("terminated") or {})
            if term.get("message"):
                return _parse_termination(term["message"])
    return None


COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def failed_ranks(pods: list[dict], container: str = "trainer") -> list[dict]:
    """Each of a Job's pods whose ``container`` exited non-zero, first failure first: {"node": the pod's
    completion index (its node rank in a distributed run; absent for a plain Job), "pod", "exitCode",
    "message": what it wrote to its termination log (the trainer's JSON "message", with its "rank")}. In a
    distributed run the first is the cause: the other ranks fail after it, in the collective it left."""
    out = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if cs.get("name") != container or not term.get("exitCode"):
                continue
            report = _parse_termination(term.get("message") or "")
            report = report if isinstance(report, dict) else {"message": str(report)}
            index = (meta.get("annotations") or {}).get(COMPLETION_INDEX)
            out.append({**({"node": int(index)} if index and index.isdigit() else {}), "pod": meta.get("name"),
                        "exitCode": term["exitCode"], "finishedAt": term.get("finishedAt") or "",
                        "message": report.get("message") or term.get("reason") or "",
                        **({"rank": report["rank"]} if isinstance(report.get("rank"), int) else {})})
    out.sort(key=lambda f: (f["finishedAt"], f.get("node", 0)))
    return out


def container_image(pods: list[dict], container: str) -> dict[str, str] | None:
    """What the kubelet ran for ``container`` in the newest of a Job's pods (``job_pods``) that reports it:
    {"image": the pod spec's reference, what the kubelet was told to run, "imageID": what it resolved, "node":
    the node the scheduler bound it to}; all from the one pod, so they describe one run. None before any pod
    reports an imageID."""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if cs.get("name") == container and cs.get("imageID"):
                spec = next((c for c in (pod.get("spec") or {}).get("containers") or []
                             if c.get("name") == container), {})
                node = (pod.get("spec") or {}).get("nodeName")
                return {**({"image": spec["image"]} if spec.get("image") else {}), "imageID": cs["imageID"],
                        **({"node": node} if node else {})}
    return None
