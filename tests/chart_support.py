"""The Helm chart rendered by the real helm binary (.venv/bin/helm, installed by scripts/setup), and its RBAC
rules evaluated the way the API server's RBAC authorizer does, for the requests the operator makes."""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

import yaml

from helpers import ROOT

CHART = ROOT / "charts/hardened-model-operator"
HELM = str(ROOT / ".venv/bin/helm") if (ROOT / ".venv/bin/helm").exists() else shutil.which("helm")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120)
    if check and out.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)}: {out.stdout}{out.stderr}")
    return out


def set_args(sets) -> list[str]:
    """``--set`` flags for helm, one per value."""
    return [arg for s in sets for arg in ("--set", s)]


def render(*sets: str, namespace: str = "hardened-system", crds: bool = False) -> list[dict]:
    args = ["template", "hm", str(CHART), "--namespace", namespace] + (["--include-crds"] if crds else [])
    args += set_args(sets)
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


@dataclass(frozen=True)
class Permission:
    """One authorization check: what the API server asks RBAC for one request."""
    group: str
    resource: str        # plural, with "/subresource" when there is one
    verb: str
    namespace: str | None
    name: str | None = None


_PATH = re.compile(r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
                   r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<resource>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?$")


def permission(method: str, path: str, query: dict) -> Permission | None:
    """The RBAC check for one HTTP request; None for discovery paths (/api, /apis/...), which every
    authenticated user may read (ClusterRole system:discovery)."""
    m = _PATH.match(path)
    if not m:
        return None
    group = "" if m["core"] else m["group"]
    resource = m["resource"] + (f"/{m['sub']}" if m["sub"] else "")
    name = m["name"]
    if method == "GET":
        verb = "watch" if str(query.get("watch", "")).lower() in ("true", "1") else ("get" if name else "list")
    else:
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete" if name else
                "deletecollection"}[method]
    return Permission(group, resource, verb, m["ns"], name)


def rules_of(objs: list[dict]) -> list[tuple[str | None, dict]]:
    """(namespace the rule applies in, or None for cluster-wide; rule) for every bound role of the chart."""
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objs
             if o["kind"] in ("ClusterRole", "Role")}
    out = []
    for b in objs:
        if b["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        ns = b["metadata"].get("namespace") if b["kind"] == "RoleBinding" else None
        ref = b["roleRef"]
        role = roles[(ref["kind"], ns if ref["kind"] == "Role" else None, ref["name"])]
        out += [(ns, rule) for rule in role.get("rules", [])]
    return out


def allows(rules: list[tuple[str | None, dict]], p: Permission) -> bool:
    for ns, rule in rules:
        if ns is not None and ns != p.namespace:
            continue
        if (p.group in rule.get("apiGroups", []) and p.resource in rule.get("resources", [])
                and p.verb in rule.get("verbs", [])
                and (not rule.get("resourceNames") or p.name in rule["resourceNames"])):
            return True
    return False


def grants(rules: list[tuple[str | None, dict]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for _, rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
