"""Pure builders: strict validation against the Kubernetes API schemas, restricted pods, stable names."""
import dataclasses
import json

import kubernetes_validate
import pytest

from hardened_operator.manifests.monitoring import build_rule_groups
from hardened_operator.manifests.jobs import build_training_job, build_verify_job
from hardened_operator.manifests.objects import build_deployment, names
from hardened_operator.manifests.render import build_all
from hardened_model.contracts import training_version
from hardened_model.spec import parse_manifest
from hardened_trainer.config import parse_config
from helpers import EXAMPLES, example, restricted_pss_violations

K8S_VERSIONS = ["1.30.0", "1.33.0", "1.37.0"]


def model(name="digits-demo", **meta):
    doc = example(name)
    doc["metadata"].update({"uid": "0d5c3f0e-1111-2222-3333-444455556666", **meta})
    return parse_manifest(doc)


def pod_specs(obj):
    if obj["kind"] == "Job" or obj["kind"] == "Deployment":
        return [obj["spec"]["template"]["spec"]]
    return []


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_rendered_object_passes_strict_validation(path, version):
    for obj in build_all(model(path.stem)):
        if obj["apiVersion"].startswith("monitoring.coreos.com"):
            continue  # not a core API: checked below by shape and with promtool in the packaging tests
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_pod_meets_the_restricted_pod_security_standard(path):
    pods = [pod for obj in build_all(model(path.stem)) for pod in pod_specs(obj)]
    assert len(pods) == 3  # training Job, verify Job, serving Deployment
    for pod in pods:
        assert restricted_pss_violations(pod) == []
        assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_no_container_mounts_a_volume_or_path_twice(path):
    """A real apiserver refused the serving Deployment with 422 (mountPath must be unique): the model container
    got the trust volume twice. kubernetes-validate checks types, not this (issue 14)."""
    for obj in build_all(model(path.stem)):
        for pod in pod_specs(obj):
            volumes = [v["name"] for v in pod["volumes"]]
            assert len(volumes) == len(set(volumes)), obj["kind"]
            for c in pod.get("initContainers", []) + pod["containers"]:
                paths = [m["mountPath"] for m in c.get("volumeMounts", [])]
                assert len(paths) == len(set(paths)), (obj["kind"], c["name"], paths)
                assert {m["name"] for m in c.get("volumeMounts", [])} <= set(volumes), c["name"]


def test_generated_secrets_outlive_the_model():
    """Re-creating a model must not rotate the API key its clients hold nor its signing key (issue 14)."""
    from hardened_operator.manifests.objects import build_api_keys_secret, build_signing_secret

    for secret in (build_api_keys_secret(model(), "hm_x"), build_signing_secret(model(), "priv", "pub")):
        assert "ownerReferences" not in secret["metadata"]
        assert secret["metadata"]["labels"]["hardened.dev/model"] == "digits-demo"


def test_the_restricted_check_catches_each_violation():
    pod = pod_specs(build_verify_job(model()))[0]
    for path, value, expected in [(("containers", 0, "securityContext", "runAsNonRoot"), False, "runAsNonRoot"),
                                  (("containers", 0, "securityContext", "seccompProfile"), {"type": "Unconfined"},
                                   "seccompProfile"),
                                  (("securityContext", "runAsUser"), 0, "runAsUser 0"),
                                  (("containers", 0, "securityContext", "allowPrivilegeEscalation"), True,
                                   "allowPrivilegeEscalation"),
                                  (("containers", 0, "securityContext", "capabilities"), {"add": ["SYS_ADMIN"]},
                                   "capabilities"),
                                  (("hostNetwork",), True, "hostNetwork"),
                                  (("volumes", 0), {"name": "h", "hostPath": {"path": "/"}}, "hostPath")]:
        bad = json.loads(json.dumps(pod))
        target = bad
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        assert any(expected in v for v in restricted_pss_violations(bad)), (path, restricted_pss_violations(bad))


def test_names_are_deterministic_and_follow_the_training_version():
    a, b = model(), model()
    assert names(a) == names(b)
    assert names(a).train == f"digits-demo-train-{training_version(a.spec)}"
    longest = model(name="mnist-adv-dp")
    assert all(len(v) <= 63 for v in dataclasses.astuple(names(longest)))


def test_every_child_is_owned_by_the_model():
    for obj in build_all(model()):
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref["kind"] == "HardenedModel" and ref["controller"] is True and ref["uid"]


def test_training_job_gpu_scheduling_and_irsa():
    job = build_training_job(model("eks-s3-irsa"))
    pod = job["spec"]["template"]["spec"]
    (trainer,) = pod["containers"]
    assert trainer["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"]["eks.amazonaws.com/nodegroup"] == "gpu-a10g"
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["serviceAccountName"] == "hardened-model-irsa"
    # IRSA needs no API-server token: the EKS webhook injects its own projected web-identity token
    assert pod["automountServiceAccountToken"] is False
    assert job["spec"]["activeDeadlineSeconds"] == 10800 and job["spec"]["backoffLimit"] == 2
    assert {"name": "AWS_REGION", "value": "us-east-1"} in trainer["env"]


def test_training_configmap_is_a_config_the_trainer_accepts():
    for path in EXAMPLES:
        cm = next(o for o in build_all(model(path.stem)) if o["kind"] == "ConfigMap")
        cfg = parse_config(json.loads(cm["data"]["train.json"]))
        assert cfg.version == training_version(cfg.spec)


def test_deployment_pins_the_digest_and_verifies_first():
    dep = build_deployment(model(), digest="ab" * 32, version="v1")
    pod = dep["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["args"][0] == "verify" and "--expect-digest" in init["args"]
    assert init["args"][init["args"].index("--expect-digest") + 1] == "ab" * 32
    model_c = pod["containers"][0]
    assert model_c["args"][model_c["args"].index("--expect-digest") + 1] == "ab" * 32
    assert [c["name"] for c in pod["containers"]] == ["model", "validation", "ratelimit"]
    hosts = {c["name"]: c["args"][c["args"].index("--host") + 1] for c in pod["containers"]}
    assert hosts == {"model": "127.0.0.1", "validation": "127.0.0.1", "ratelimit": "0.0.0.0"}  # only one door
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1,
                                                                                         "maxUnavailable": 0}
    # two or more: one old pod may stop first, so a rollout never waits for room for a surge pod (issue 14)
    doc = example("digits-demo")
    doc["spec"]["serving"]["replicas"] = 2
    two = build_deployment(parse_manifest(doc), digest="ab" * 32, version="v1")
    assert two["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 1}


def test_every_probe_and_scrape_reaches_an_address_the_kubelet_and_prometheus_can_connect_to():
    """The kubelet probes the pod IP and Prometheus scrapes it: a probe of a port bound to 127.0.0.1 is refused,
    which keeps the pod unready and restarts the container every liveness period."""
    from hardened_operator.cli import build_parser
    from hardened_operator.manifests.monitoring import build_service_monitor
    from hardened_operator.manifests.objects import build_metrics_service

    parser = build_parser()
    for path in EXAMPLES:
        m = model(path.stem)
        pod = build_deployment(m, digest="ab" * 32, version="v1")["spec"]["template"]["spec"]
        bound = {}  # container port -> the address the process listens on, from its own argument parser
        for c in pod["containers"]:
            args = parser.parse_args([a.replace("$(CPU_REQUEST)", "2") for a in c["args"]])
            bound[args.port] = args.host
            bound[args.metrics_port] = args.metrics_host or args.host
            named = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert set(named.values()) == {args.port, args.metrics_port}, c["name"]
            for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                if kind in c:
                    port = c[kind]["httpGet"]["port"]
                    assert bound[named.get(port, port)] == "0.0.0.0", (path.stem, c["name"], kind)
            # liveness is the process's own: the admin port's /healthz, never forwarded down the chain
            assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": args.metrics_port}, c["name"]
        service = {p["name"]: p["targetPort"] for p in build_metrics_service(m)["spec"]["ports"]}
        for endpoint in build_service_monitor(m)["spec"]["endpoints"]:
            assert bound[service[endpoint["port"]]] == "0.0.0.0", endpoint
        by_name = {c["name"]: c for c in pod["containers"]}
        # the Service routes to a pod only when the whole chain is ready: the rate-limit sidecar's admin /readyz
        # asks validation -> model (plain HTTP: the public port may want TLS client certificates)
        assert by_name["ratelimit"]["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9092}
        # loading a large model must not trip liveness
        startup = by_name["model"]["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


def test_model_server_threads_follow_the_cpu_request():
    import re

    from hardened_operator.cli import build_parser

    dep = build_deployment(model(), digest="ab" * 32, version="v1")
    model_c = dep["spec"]["template"]["spec"]["containers"][0]
    assert model_c["args"][model_c["args"].index("--cpu-threads") + 1] == "$(CPU_REQUEST)"
    (cpu,) = [e for e in model_c["env"] if e["name"] == "CPU_REQUEST"]
    assert cpu["valueFrom"]["resourceFieldRef"] == {"containerName": "model", "resource": "requests.cpu",
                                                   "divisor": "1"}  # divisor 1: rounded up to whole cores
    # every $(VAR) in any container's args is an env var of that container (else Kubernetes passes it verbatim)
    for path in EXAMPLES:
        pod = build_deployment(model(path.stem), digest="ab" * 32, version="v1")["spec"]["template"]["spec"]
        for c in pod["containers"] + pod["initContainers"]:
            refs = {m for a in c["args"] for m in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", a)}
            assert refs <= {e["name"] for e in c.get("env", [])}, (path.stem, c["name"], refs)
    parser = build_parser()
    args = parser.parse_args(["serve", "--artifact", "a", "--public-key", "k", "--cpu-threads", "3"])
    assert args.cpu_threads == 3
    for bad in ("0", "-1", "1.5", "$(CPU_REQUEST)"):
        with pytest.raises(SystemExit):
            parser.parse_args(["serve", "--artifact", "a", "--cpu-threads", bad])


def test_s3_versions_are_downloaded_by_the_init_container():
    dep = build_deployment(model("eks-s3-irsa"), digest="cd" * 32, version="v1")
    (init,) = dep["spec"]["template"]["spec"]["initContainers"]
    uri = init["args"][init["args"].index("--uri") + 1]
    assert uri.startswith("s3://acme-ml-models/hardened/mnist/mnist-eks/")
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "hardened-model-irsa"


def test_verify_job_checks_the_gates_of_the_spec():
    job = build_verify_job(model())
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert json.loads(args[args.index("--gates") + 1]) == {"minCleanAccuracy": 0.8, "minRobustAccuracy": 0.3,
                                                           "maxEpsilon": 8.0, "maxMembershipAUC": 0.6}
    assert "--termination-log" in args


def test_the_verifier_is_the_platforms_image_never_the_specs_serving_image():
    """Issue 27: whoever writes the spec must not choose the program that decides whether its signature holds.
    The verify Job and the init container run the operator's verifier image; the model server and its sidecars
    run spec.serving.image. Without a configured one (render, tests) it is this release's server image."""
    from hardened_operator.manifests.objects import DEFAULT_VERIFIER_IMAGE

    doc = example("digits-demo")
    doc["metadata"]["uid"] = "u"
    doc["spec"]["serving"]["image"] = "registry.tenant.test/server:verifies-anything"
    m = parse_manifest(doc)
    platform = "registry.platform.test/hardened/server@sha256:" + "c" * 64
    verify = build_verify_job(m, verifier_image=platform)["spec"]["template"]["spec"]["containers"]
    pod = build_deployment(m, digest="ab" * 32, version="v1", verifier_image=platform)["spec"]["template"]["spec"]
    assert [c["image"] for c in verify] == [platform] and [c["image"] for c in pod["initContainers"]] == [platform]
    assert {c["image"] for c in pod["containers"]} == {"registry.tenant.test/server:verifies-anything"}
    assert DEFAULT_VERIFIER_IMAGE == "ghcr.io/hardened-model/server:0.1.0"
    rendered = [o for o in build_all(m) if o["kind"] in ("Job", "Deployment")]
    images = {(o["metadata"]["name"], c["name"], c["image"]) for o in rendered
              for c in o["spec"]["template"]["spec"].get("initContainers", []) + o["spec"]["template"]["spec"][
                  "containers"]}
    n = names(m)
    assert {(name, c) for name, c, image in images if image == DEFAULT_VERIFIER_IMAGE} == {
        (n.verify, "verify"), ("digits-demo", "verify-model")}
    assert {image for name, c, image in images if name == "digits-demo" and c != "verify-model"} == {
        "registry.tenant.test/server:verifies-anything"}


def test_network_policy_admits_only_the_rate_limit_port_for_traffic():
    netpol = next(o for o in build_all(model()) if o["kind"] == "NetworkPolicy"
                  and o["metadata"]["name"] == "digits-demo")
    traffic = netpol["spec"]["ingress"][0]
    assert traffic == {"ports": [{"protocol": "TCP", "port": "http"}]}  # the container port named http: 8443
    assert set(netpol["spec"]["policyTypes"]) == {"Ingress", "Egress"}


def edge_model(**serving):
    doc = example("digits-demo")
    doc["metadata"]["uid"] = "0d5c3f0e-1111-2222-3333-444455556666"
    doc["spec"]["serving"] = {**doc["spec"].get("serving", {}), **serving}
    return parse_manifest(doc)


def test_tls_jwt_and_keys_reach_the_rate_limit_sidecar_as_mounted_files_and_flags():
    from hardened_operator.cli import build_parser

    m = edge_model(tls={"secretName": "digits-tls", "clientCASecret": "callers-ca"},
                   auth={"apiKeys": True, "jwt": {"jwks": {"kind": "ConfigMap", "name": "idp-jwks", "key": "jwks.json"},
                                                  "issuer": "https://idp.example", "audience": "digits"}})
    objs = build_all(m)
    dep = next(o for o in objs if o["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    rl = next(c for c in pod["containers"] if c["name"] == "ratelimit")
    args = build_parser().parse_args(rl["args"])
    mounts = {v["mountPath"]: v["name"] for v in rl["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for flag in (args.tls_cert, args.tls_key, args.client_ca, args.jwks, args.api_keys):
        folder = flag.rsplit("/", 1)[0]
        assert folder in mounts, flag
    assert volumes[mounts[args.tls_cert.rsplit("/", 1)[0]]]["secret"]["secretName"] == "digits-tls"
    assert volumes[mounts[args.client_ca.rsplit("/", 1)[0]]]["secret"]["secretName"] == "callers-ca"
    assert volumes[mounts[args.jwks.rsplit("/", 1)[0]]]["configMap"]["name"] == "idp-jwks"
    assert not any("subPath" in mnt for mnt in rl["volumeMounts"])  # updates must reach the files
    assert {"name": "https", "containerPort": 8443} in rl["ports"]
    svc = next(o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == "digits-demo")
    assert svc["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP",
                                     "appProtocol": "https"}]
    netpol = next(o for o in objs if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "digits-demo")
    assert netpol["spec"]["ingress"][0] == {"ports": [{"protocol": "TCP", "port": "https"}]}
    # probes stay on the plain admin port, which the kubelet can reach without a client certificate
    assert rl["readinessProbe"]["httpGet"]["port"] == 9092
    assert not restricted_pss_violations(pod)


def test_jwt_only_mounts_no_api_keys():
    from hardened_operator.cli import build_parser

    m = edge_model(auth={"apiKeys": False, "jwt": {"jwks": {"kind": "Secret", "name": "idp", "key": "jwks"},
                                                   "issuer": "https://idp.example", "audience": "digits"}})
    dep = next(o for o in build_all(m) if o["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    rl = next(c for c in pod["containers"] if c["name"] == "ratelimit")
    args = build_parser().parse_args(rl["args"])
    assert args.api_keys is None and args.jwks and args.tls_cert is None
    assert "api-keys" not in {v["name"] for v in pod["volumes"]}


def test_job_pods_accept_nothing_and_reach_https_only_when_the_spec_needs_it():
    def policy(name):
        return next(o for o in build_all(model(name)) if o["kind"] == "NetworkPolicy"
                    and o["metadata"]["name"].endswith("-jobs"))

    local = policy("digits-demo")  # builtin data, pvc:// store, key signing: DNS only
    assert local["spec"]["ingress"] == [] and set(local["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert [p["port"] for rule in local["spec"]["egress"] for p in rule["ports"]] == [53, 53]
    assert local["spec"]["podSelector"]["matchExpressions"][0]["values"] == ["training", "verification"]
    s3 = policy("eks-s3-irsa")
    assert {"protocol": "TCP", "port": 443} in [p for rule in s3["spec"]["egress"] for p in rule["ports"]]
    for obj in build_all(model("eks-s3-irsa")):
        if obj["kind"] in ("Job", "Deployment"):
            assert obj["spec"]["template"]["spec"]["automountServiceAccountToken"] is False, obj["kind"]


def test_monitoring_objects_carry_the_spec_labels_and_every_alert_is_documented():
    m = model("mnist-adv-dp")
    objs = {o["kind"]: o for o in build_all(m)}
    assert objs["ServiceMonitor"]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert objs["PrometheusRule"]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    alerts = [r for g in build_rule_groups(m) for r in g["rules"] if "alert" in r]
    assert len(alerts) == 12
    for alert in alerts:
        assert set(alert["annotations"]) == {"summary", "description", "runbook"}
    assert {k for k in (o["kind"] for o in build_all(m, monitoring_crds=False))} >= {"Deployment", "Service"}
    assert "PrometheusRule" not in {o["kind"] for o in build_all(m, monitoring_crds=False)}


def test_render_command_prints_every_object(capsys):
    from hardened_operator.cli import main
    from helpers import ROOT

    assert main(["render", str(ROOT / "examples/digits-demo.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.count("\nkind: ") + out.startswith("kind: ") == len(build_all(model()))


def test_initial_weights_on_another_claim_are_mounted_read_only_and_named_in_the_trainer_config():
    from hardened_operator.manifests.jobs import build_training_configmap

    doc = example("digits-demo")
    doc["metadata"]["uid"] = "0d5c3f0e-1111-2222-3333-444455556666"
    doc["spec"]["model"]["initialWeights"] = {"uri": "pvc://baselines/digits/v1.safetensors", "sha256": "a" * 64}
    m = parse_manifest(doc)
    pod = build_training_job(m)["spec"]["template"]["spec"]
    assert {"name": "initial-weights", "persistentVolumeClaim": {"claimName": "baselines", "readOnly": True}} \
        in pod["volumes"]
    assert {"name": "initial-weights", "mountPath": "/volumes/baselines", "readOnly": True} \
        in pod["containers"][0]["volumeMounts"]
    cfg = parse_config(json.loads(build_training_configmap(m)["data"]["train.json"]))
    assert cfg.volumes == {"baselines": "/volumes/baselines"}
    # on the store's own claim: no second mount, the store's mount path
    doc["spec"]["model"]["initialWeights"]["uri"] = "pvc://hardened-models/baselines/v1.safetensors"
    m = parse_manifest(doc)
    assert "initial-weights" not in {v["name"] for v in build_training_job(m)["spec"]["template"]["spec"]["volumes"]}
    assert parse_config(json.loads(build_training_configmap(m)["data"]["train.json"])).volumes == {
        "hardened-models": "/artifacts"}
    # from S3: the Job pods may reach HTTPS
    doc["spec"]["model"]["initialWeights"]["uri"] = "s3://baselines/digits/v1.safetensors"
    jobs = next(o for o in build_all(parse_manifest(doc)) if o["metadata"]["name"].endswith("-jobs"))
    assert {"protocol": "TCP", "port": 443} in [p for rule in jobs["spec"]["egress"] for p in rule["ports"]]


def test_a_private_sigstore_trust_config_reaches_the_trainer_and_every_verifier():
    """signing.keyless.trustConfig: the training Job mounts it and its config names it; the verify Job, the
    init container and the model server get --trust-config with the same volume."""
    doc = example("digits-demo")
    doc["metadata"]["uid"] = "u"
    doc["spec"]["signing"] = {"method": "keyless", "keyless": {
        "identity": "trainer@acme.test", "oidcIssuer": "https://oidc.acme.test",
        "trustConfig": {"kind": "Secret", "name": "private-sigstore", "key": "trust.json"}}}
    m = parse_manifest(doc)
    job = build_training_job(m)["spec"]["template"]["spec"]
    assert {"name": "sigstore-trust", "secret": {"secretName": "private-sigstore", "items": [
        {"key": "trust.json", "path": "trust_config.json"}]}} in job["volumes"]
    from hardened_operator.manifests.jobs import build_training_configmap
    cfg = parse_config(json.loads(build_training_configmap(m)["data"]["train.json"]))
    assert cfg.signing.trust_config_path == "/var/run/hardened/sigstore-trust/trust_config.json"
    assert any(v["mountPath"] == "/var/run/hardened/sigstore-trust" for v in job["containers"][0]["volumeMounts"])
    verify = build_verify_job(m)["spec"]["template"]["spec"]
    dep = build_deployment(m, digest="ab" * 32, version="v")["spec"]["template"]["spec"]
    for pod, container in ((verify, verify["containers"][0]), (dep, dep["initContainers"][0]),
                           (dep, next(c for c in dep["containers"] if c["name"] == "model"))):
        args = container["args"]
        assert args[args.index("--trust-config") + 1] == "/var/run/hardened/sigstore-trust/trust_config.json"
        assert args[args.index("--identity") + 1] == "trainer@acme.test"
        assert any(v["name"] == "sigstore-trust" for v in pod["volumes"])
        assert any(v["name"] == "sigstore-trust" for v in container["volumeMounts"])
    # without it: the public-good root bundled with sigstore-python, and no volume
    doc["spec"]["signing"]["keyless"].pop("trustConfig")
    plain = build_verify_job(parse_manifest(doc))["spec"]["template"]["spec"]
    assert "--trust-config" not in plain["containers"][0]["args"]
    assert not any(v["name"] == "sigstore-trust" for v in plain["volumes"])


def test_the_provenance_policy_and_data_pin_reach_both_verifiers_and_the_trainer_knows_its_image():
    doc = example("digits-demo")
    doc["metadata"]["uid"] = "u"
    doc["spec"]["data"]["sha256"] = "5f" * 32
    doc["spec"]["signing"]["provenance"] = {"allowedTrainerImages": ["ghcr.io/acme/"]}
    m = parse_manifest(doc)
    want = {"allowedTrainerImages": ["ghcr.io/acme/"], "dataSha256": "5f" * 32, "required": False,
            "requireDataDigest": False}
    verify = build_verify_job(m)["spec"]["template"]["spec"]["containers"][0]["args"]
    init = build_deployment(m, digest="ab" * 32, version="v")["spec"]["template"]["spec"]["initContainers"][0]["args"]
    for args in (verify, init):
        assert json.loads(args[args.index("--provenance-policy") + 1]) == want
    env = {e["name"]: e for e in build_training_job(m)["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HARDENED_TRAINER_IMAGE"]["value"] == m.spec.training.image
    assert env["HARDENED_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # no policy and no pin: nothing to enforce, no argument
    plain = build_verify_job(model())["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--provenance-policy" not in plain


def trained_pod(m, image_id):
    """The training Job's pod as the API server returns it once the kubelet ran it: the spec the operator built,
    the status the kubelet wrote."""
    job = build_training_job(m)
    return {"metadata": {"name": f"{names(m).train}-x1", "creationTimestamp": "2026-11-22T05:00:00Z"},
            "spec": {**job["spec"]["template"]["spec"], "nodeName": "gpu-node-3"},
            "status": {"containerStatuses": [{"name": "trainer", "image": "ignored:by-the-operator",
                                              "imageID": image_id}]}}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_both_verifiers_get_what_the_kubelet_ran_for_the_training_pod(version):
    """Issue 27 point 4: the trainer signs its own provenance, so the verifiers are told what the kubelet ran,
    the pod spec's reference and the status imageID of the one newest pod; the Deployment keeps it in an
    annotation for a pod restarted after the training pods are gone. Without an observed pod, no flag."""
    from hardened_operator.kube import container_image
    from hardened_operator.manifests.objects import OBSERVED_TRAINER_ANNOTATION

    m = model()
    image_id = "ghcr.io/hardened-model/trainer@sha256:" + "ab" * 32
    older = trained_pod(m, "ghcr.io/hardened-model/trainer@sha256:" + "00" * 32)
    older["spec"] = {**older["spec"], "containers": [{**older["spec"]["containers"][0], "image": "old:1"}]}
    ran = container_image([trained_pod(m, image_id), older], "trainer")  # job_pods' order: newest first
    assert ran == {"image": m.spec.training.image, "imageID": image_id, "node": "gpu-node-3"}
    job = build_verify_job(m, observed_trainer=ran)
    dep = build_deployment(m, digest="ab" * 32, version="v", observed_trainer=ran)
    for obj in (job, dep):
        kubernetes_validate.validate(obj, version, strict=True)
    verify = job["spec"]["template"]["spec"]["containers"][0]["args"]
    init = dep["spec"]["template"]["spec"]["initContainers"][0]["args"]
    for args in (verify, init):
        assert args[args.index("--observed-trainer-image") + 1] == m.spec.training.image
        assert args[args.index("--observed-trainer-image-id") + 1] == image_id
        assert args[args.index("--observed-trainer-node") + 1] == "gpu-node-3"
    assert json.loads(dep["metadata"]["annotations"][OBSERVED_TRAINER_ANNOTATION]) == ran
    assert not any("--observed" in a for c in dep["spec"]["template"]["spec"]["containers"] for a in c["args"])
    # no pod reported yet, or none given: no flags, no annotation
    assert container_image([], "trainer") is None
    assert container_image([{"status": {"containerStatuses": [{"name": "trainer"}]}}], "trainer") is None
    plain_job, plain_dep = build_verify_job(m), build_deployment(m, digest="ab" * 32, version="v")
    for args in (plain_job["spec"]["template"]["spec"]["containers"][0]["args"],
                 plain_dep["spec"]["template"]["spec"]["initContainers"][0]["args"]):
        assert not any(a.startswith("--observed-trainer") for a in args)
    assert OBSERVED_TRAINER_ANNOTATION not in plain_dep["metadata"]["annotations"]
    # a reference without an imageID (a runtime that reports none) passes the reference alone
    only = build_verify_job(m, observed_trainer={"image": m.spec.training.image})
    args = only["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--observed-trainer-image" in args and "--observed-trainer-image-id" not in args


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_platform_countersignature_reaches_only_the_init_container_and_only_when_on(version):
    """Issue 27 point 4: with the operator's platform key, the Deployment pins the platform's envelope in an
    annotation and its verify-model init container gets the envelope, the key's public PEM (never the private
    key, no Secret mounted for it) and the model it must name. Off (no countersignature), nothing of it."""
    from hardened_model import countersign
    from hardened_model.countersign import PlatformKey
    from hardened_model.signing import generate_key_pem
    from hardened_operator.manifests.commands import Countersignature
    from hardened_operator.manifests.objects import COUNTERSIGNATURE_ANNOTATION

    m = model(namespace="ml")
    key = PlatformKey.from_pem(generate_key_pem()[0])
    envelope = key.sign(countersign.build_statement(digest="ab" * 32, namespace="ml", name="digits-demo",
                                                    version="v", verdict={"verified": True},
                                                    observed_trainer=None, time="2026-12-03T10:00:00Z"))
    dep = build_deployment(m, digest="ab" * 32, version="v", countersignature=Countersignature(envelope,
                                                                                                key.public_pem))
    kubernetes_validate.validate(dep, version, strict=True)
    pod = dep["spec"]["template"]["spec"]
    init = pod["initContainers"][0]["args"]
    assert json.loads(init[init.index("--countersignature") + 1]) == envelope
    assert init[init.index("--platform-public-key-pem") + 1] == key.public_pem
    assert init[init.index("--expect-model") + 1] == "ml/digits-demo"
    assert json.loads(dep["metadata"]["annotations"][COUNTERSIGNATURE_ANNOTATION]) == envelope
    assert "PRIVATE" not in json.dumps(dep)
    assert not any(a in ("--countersignature", "--platform-public-key-pem") for c in pod["containers"]
                   for a in c["args"])
    plain = build_deployment(m, digest="ab" * 32, version="v")
    assert plain["spec"]["template"]["spec"]["volumes"] == pod["volumes"]  # no volume for the platform key
    assert COUNTERSIGNATURE_ANNOTATION not in plain["metadata"]["annotations"]
    assert not any(a.startswith(("--countersignature", "--platform-public", "--expect-model"))
                   for a in plain["spec"]["template"]["spec"]["initContainers"][0]["args"])
    job = build_verify_job(m)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--countersignature" not in job  # the verify Job makes the report the platform then signs


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_a_run_over_several_pods_is_an_indexed_job_behind_a_headless_service(version):
    """Issue 28: two pods, one rank each, ranked by the completion index and meeting at pod 0 by its DNS name
    (<job>-0.<job>: the Service's name is the pods' subdomain); a non-zero trainer exit fails the whole run;
    the Job pods are opened to each other only."""
    from hardened_operator.manifests.jobs import build_training_peers_policy, build_training_service
    from hardened_operator.manifests.objects import build_jobs_network_policy

    m = model("digits-distributed")
    n = names(m)
    job, svc, netpol = build_training_job(m), build_training_service(m), build_training_peers_policy(m)
    for obj in (job, svc, netpol):
        kubernetes_validate.validate(obj, version, strict=True)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert spec["podFailurePolicy"] == {"rules": [{"action": "FailJob", "onExitCodes": {
        "containerName": "trainer", "operator": "NotIn", "values": [0]}}]}
    assert pod["subdomain"] == svc["metadata"]["name"] == n.train
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {"batch.kubernetes.io/job-name": n.train}
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    peers = {"podSelector": {"matchLabels": job["spec"]["template"]["metadata"]["labels"]}}
    assert netpol["spec"]["podSelector"] == peers["podSelector"]  # the training pods only, not verification's
    assert netpol["spec"]["ingress"] == [{"from": [peers]}] and netpol["spec"]["egress"] == [{"to": [peers]}]
    assert build_jobs_network_policy(m)["spec"]["ingress"] == []
    assert not restricted_pss_violations(pod)
    # one pod (or none distributed): a plain Job, no Service, no peer traffic
    plain = model("digits-demo")
    assert "completionMode" not in build_training_job(plain)["spec"] and build_training_service(plain) is None
    assert build_training_peers_policy(plain) is None
    one_pod = parse_manifest({**example("digits-demo"), "spec": {**example("digits-demo")["spec"], "training": {
        **example("digits-demo")["spec"]["training"], "distributed": {"nodes": 1, "processesPerNode": 2}}}})
    assert "completionMode" not in build_training_job(one_pod)["spec"] and build_training_service(one_pod) is None
    assert [o["kind"] for o in build_all(m)][:5] == ["NetworkPolicy", "ConfigMap", "NetworkPolicy", "Service", "Job"]


def test_gpu_ranks_in_one_pod_get_a_shared_memory_volume():
    doc = example("digits-demo")
    doc["spec"]["training"].update(distributed={"nodes": 1}, resources={"gpus": 4})
    pod = build_training_job(parse_manifest(doc))["spec"]["template"]["spec"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}} in pod["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]


def test_the_trainer_checkpoints_beside_the_version_on_a_volume_store_only():
    """A retried training pod resumes from the checkpoint (the accountant keeps every step taken), so it must
    outlive the pod: on a pvc:// store it lies beside the version folder; an s3:// store's pods keep nothing."""
    from hardened_operator.manifests.objects import version_location

    m = model()
    args = build_training_job(m)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--checkpoint-dir") + 1] == version_location(m)[1] + ".checkpoint"
    s3 = build_training_job(model("eks-s3-irsa"))["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--checkpoint-dir" not in s3


def test_status_says_a_run_resumed_and_its_world():
    from hardened_operator.status import JobState, training_condition, training_status

    report = {"resumedFromEpoch": 3, "worldSize": 2, "dataDigest": "d" * 64}
    assert training_condition(JobState("succeeded", "Completed", "completed"), job_name="j", report=report) == (
        "True", "Succeeded", "training Job j completed (resumed from its checkpoint of epoch 3)")
    st = training_status(None, job_name="j", config_digest="v", image_id=None, report=report)
    assert (st["resumedFromEpoch"], st["worldSize"]) == (3, 2)


def test_scratch_requests_ephemeral_storage_and_caps_the_tmp_volume():
    """resources.scratch: the trainer's /tmp (examples beyond its memory budget) is requested from the scheduler
    and capped; without it nothing is requested, as before."""
    doc = example("digits-demo")
    doc["spec"]["training"]["resources"] = {"cpu": "1", "memory": "2Gi", "scratch": "40Gi"}
    doc["spec"]["serving"]["resources"] = {"cpu": "500m", "memory": "1Gi", "scratch": "2Gi"}
    m = parse_manifest(doc)
    pod = build_training_job(m)["spec"]["template"]["spec"]
    [trainer] = pod["containers"]
    assert trainer["resources"]["requests"]["ephemeral-storage"] == "40Gi" == \
        trainer["resources"]["limits"]["ephemeral-storage"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "40Gi"}} in pod["volumes"]
    dep = build_deployment(m, digest="d" * 64, version="v")["spec"]["template"]["spec"]
    assert next(c for c in dep["containers"] if c["name"] == "model")["resources"]["limits"][
        "ephemeral-storage"] == "2Gi"
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}} in dep["volumes"]
    for obj in (build_training_job(m), build_deployment(m, digest="d" * 64, version="v")):
        kubernetes_validate.validate(obj, "1.30", strict=True)
    plain = build_training_job(model())["spec"]["template"]["spec"]
    assert "ephemeral-storage" not in plain["containers"][0]["resources"]["requests"]
    assert {"name": "tmp", "emptyDir": {}} in plain["volumes"]
