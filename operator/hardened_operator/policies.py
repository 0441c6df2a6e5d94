"""The operator's reads of HardenedModelPolicies (issue 27): every policy and the model's Namespace labels on
each pass, and which models a policy's own event concerns. The rules themselves are
hardened_model.policy's; reconcile.policy_refusals applies them."""
from __future__ import annotations

from hardened_model.policy import POLICY_KIND, parse_policy, selects
from hardened_model.spec import HardenedModel, SpecError


def observe_policies(kube, model: HardenedModel, obs) -> None:
    """Every HardenedModelPolicy and the labels of the model's Namespace, read on every pass: a policy or a
    label may change at any time, and a cache could miss that (a policy's own event re-runs the models it
    concerns, see handlers.on_policy, so a change takes effect at once). ``obs``: a reconcile.Observed."""
    namespace = kube.get("Namespace", None, model.metadata.namespace) or {}
    obs.namespace_labels = dict((namespace.get("metadata") or {}).get("labels") or {})
    for body in kube.list_cluster(POLICY_KIND):
        try:
            obs.policies.append(parse_policy(body))
        except SpecError as exc:
            name = (body.get("metadata") or {}).get("name", "?")
            obs.unreadable_policies.append(f"{POLICY_KIND} {name}: spec: cannot be read ({exc}), so it refuses "
                                           "every HardenedModel until it is fixed")


def models_a_policy_concerns(kube, body: dict, models: dict[str, list[tuple[str, frozenset]]]) -> list[tuple[str, str]]:
    """(namespace, name) of each model that a HardenedModelPolicy event (``body``: the policy as it is now, or
    was when deleted) may concern: one in a namespace it selects, or one it governed at the model's last pass
    (``models``: namespace -> (name, the policies named in its PolicyAllowed condition)), whose refusal must
    lift when the selector narrows or the policy goes. A policy that cannot be parsed concerns every model (it
    refuses them all, see policy_refusals)."""
    name = (body.get("metadata") or {}).get("name")
    try:
        policy = parse_policy(body)
    except SpecError:
        policy = None
    out = []
    for ns, entries in sorted(models.items()):
        if policy is None or policy.spec.namespace_selector is None:
            selected = True
        else:
            labels = ((kube.get("Namespace", None, ns) or {}).get("metadata") or {}).get("labels") or {}
            selected = selects(policy, labels)
        out += [(ns, model) for model, governing in sorted(entries) if selected or name in governing]
    return out
