"""Every pod the operator creates is selected by a NetworkPolicy that restricts it, for every example."""
import pytest

from hardened_operator.manifests.render import build_all
from hardened_model.spec import parse_manifest
from helpers import EXAMPLES, example


def selects(selector: dict, labels: dict) -> bool:
    if not (selector.get("matchLabels") or {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions") or []:
        value = labels.get(expr["key"])
        if expr["operator"] == "In" and value not in expr["values"]:
            return False
        if expr["operator"] == "NotIn" and value in expr["values"]:
            return False
        if expr["operator"] == "Exists" and expr["key"] not in labels:
            return False
    return True


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_pod_is_fenced_in_and_out(path):
    doc = example(path.stem)
    doc["metadata"]["uid"] = "u-1"
    objs = build_all(parse_manifest(doc), digest="ab" * 32)
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    pods = [o for o in objs if o["kind"] in ("Job", "Deployment")]
    assert len(pods) == 3
    for pod in pods:
        labels = pod["spec"]["template"]["metadata"]["labels"]
        mine = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
        assert mine, f"{pod['kind']} {pod['metadata']['name']} is selected by no NetworkPolicy"
        for policy in mine:
            assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            if policy["metadata"]["name"].endswith("-training-peers"):
                # a run over several pods (issue 28): its training pods reach each other on any port (gloo and
                # NCCL pick theirs), and no one else
                peers = [{"podSelector": {"matchLabels": policy["spec"]["podSelector"]["matchLabels"]}}]
                assert labels["app.kubernetes.io/component"] == "training" and pod["spec"]["completionMode"] == \
                    "Indexed"
                assert policy["spec"]["ingress"] == [{"from": peers}] and policy["spec"]["egress"] == [{"to": peers}]
                assert peers[0]["podSelector"]["matchLabels"]["hardened.dev/model"] == doc["metadata"]["name"]
                continue
            # egress is limited to named ports (DNS, and HTTPS/Redis only when the spec needs them)
            ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
            assert ports <= {53, 443, 6379}, ports
            if pod["kind"] == "Job":  # training and verification accept no connection at all
                assert policy["spec"]["ingress"] == []


def test_the_selector_check_is_not_vacuous():
    sel = {"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "c", "operator": "In", "values": ["x"]}]}
    assert selects(sel, {"a": "1", "c": "x"})
    assert not selects(sel, {"a": "1", "c": "y"}) and not selects(sel, {"a": "2", "c": "x"})
