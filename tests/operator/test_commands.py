"""One command builder (issue 26): the pods and `hardened-model up` run the same command lines.

The flags were built twice and drifted (the local verifier got unsorted gates and a differently separated
provenance policy). These tests build every process both ways, from the objects the operator applies and
from what `up` would run, and hold them equal up to the Layout: where things are and where they listen.
"""
import copy
import dataclasses
import pathlib
import re

import pytest

from hardened_model.spec import parse_manifest
from hardened_operator import local
from hardened_operator.local import PORT_FIELDS, LocalRunner
from hardened_operator.manifests import commands, jobs, objects
from hardened_operator.manifests.objects import names
from helpers import EXAMPLES, example

DIGEST = "ab" * 32
OPERATOR = pathlib.Path(local.__file__).parent


def _variant(name, **spec):
    doc = example("digits-demo")
    for section, value in spec.items():
        doc["spec"][section] = {**doc["spec"].get(section, {}), **value}
    return name, doc


# every example, and the spec sections no example has: provenance, TLS with client CA, JWT, named key Secrets
SPECS = dict([(p.stem, example(p.stem)) for p in EXAMPLES] + [
    _variant("provenance", data={"sha256": "5f" * 32},
             signing={"provenance": {"allowedTrainerImages": ["ghcr.io/acme/"]}}),
    _variant("edge", serving={
        "tls": {"secretName": "digits-tls", "clientCASecret": "callers-ca"},
        "apiKeysSecret": {"name": "callers", "key": "keys.txt"},
        "auth": {"apiKeys": True, "jwt": {"jwks": {"kind": "ConfigMap", "name": "idp-jwks", "key": "jwks.json"},
                                          "issuer": "https://idp.example", "audience": "digits"}}}),
    _variant("jwt-only", serving={"auth": {"apiKeys": False, "jwt": {
        "jwks": {"kind": "Secret", "name": "idp", "key": "jwks"}, "issuer": "https://idp.example",
        "audience": "digits"}}}),
])

# Flags whose presence a Layout decides (the spec decides every other): a cluster downloads an s3:// version
# (--uri and its region, endpoint and pinned object versions) and hands verdicts to the kubelet's termination
# log; `up` serves its local copy and reads the verifier's stdout. Per process, they are compared only when
# both Layouts have the field.
# training.distributed: the cluster's pods meet at node 0, `up` runs every rank here (test_the_world_is_the_same...)
LAUNCH = ("--standalone", "--nnodes", "--nproc-per-node", "--node-rank", "--master-addr", "--master-port")
LAYOUT_SWITCHED = {"trainer": {"trainer_termination_log": ("--termination-log",), "rendezvous_host": LAUNCH,
                               "checkpoint_dir": ("--checkpoint-dir",)},
                   "verify": {"verify_termination_log": ("--termination-log",),
                              "artifact_uri": ("--uri", "--region", "--endpoint", "--version-ids")},
                   "model": {"cpu_threads": ("--cpu-threads",)}}
# Flags only the cluster's callers pass, from what the kubelet reported for the training pod (issue 27): `up`
# runs no kubelet, so it has no record to pass. Not a Layout's: the same Layout gives them or not by what was
# observed.
KUBELET_RECORD = {"verify": ("--observed-trainer-image", "--observed-trainer-image-id", "--observed-trainer-node")}
RAN = {"image": "ghcr.io/hardened-model/trainer:0.1.0", "imageID": "ghcr.io/hardened-model/trainer@sha256:" + "ab" * 32,
       "node": "ip-10-0-1-17.ec2.internal"}
PROGRAMS = ("server", "trainer")


def model(name):
    doc = copy.deepcopy(SPECS[name])
    doc["metadata"]["uid"] = "0d5c3f0e-1111-2222-3333-444455556666"
    return parse_manifest(doc)


def placeholders(layout):
    """Every place of a Layout as a ``<field>`` token (programs kept: they are compared apart)."""
    return dataclasses.replace(layout, **{f.name: f"<{f.name}>" for f in dataclasses.fields(layout)
                                          if f.name not in PROGRAMS and getattr(layout, f.name) is not None})


def cluster_processes(m):
    """Each process's arguments in the pods the operator creates (without the image's program)."""
    verify = jobs.build_verify_job(m, version_ids={"k": "v"},
                                      observed_trainer=RAN)["spec"]["template"]["spec"]["containers"][0]
    trainer = jobs.build_training_job(m)["spec"]["template"]["spec"]["containers"][0]
    pod = objects.build_deployment(m, digest=DIGEST, version=names(m).version)["spec"]["template"]["spec"]
    distributed = commands.world(m) is not None
    assert verify["command"] == objects.SERVER_COMMAND
    assert trainer["command"] == (jobs.TORCHRUN_COMMAND if distributed else objects.TRAINER_COMMAND)
    assert all(c["command"] == objects.SERVER_COMMAND for c in pod["containers"])
    return {"trainer": trainer["args"], "verify": verify["args"], **{c["name"]: c["args"] for c in pod["containers"]}}


def local_processes(m, root):
    """Each process's arguments as `up` would start it (without the local program)."""
    runner = LocalRunner(m, root=root)
    layout = runner.layout()
    ports = {f: 20000 + i for i, f in enumerate(PORT_FIELDS)}
    argvs = {"trainer": runner.train_argv(), "verify": runner.verify_argv(),
             **runner.serving_argvs(DIGEST, ports)}
    for name, argv in argvs.items():
        program = layout.trainer if name == "trainer" else layout.server
        if name == "trainer" and commands.world(m) is not None:  # torchrun with the trainer's Python
            program = (layout.trainer[0], "-m", commands.TORCHRUN)
        assert tuple(argv[:len(program)]) == program, name
        argvs[name] = argv[len(program):]
    return argvs


def without(argv, flags):
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg in flags:
            skip = i + 1 < len(argv) and not argv[i + 1].startswith("--")
        else:
            out.append(arg)
    return out


def both(name, tmp_path, monkeypatch):
    """(cluster, local, cluster Layout, local Layout) of one spec, each built with its Layout's places as
    tokens: equal command lines then mean equal flags, values and order, and the same place for each path."""
    m = model(name)
    real_cluster, real_local = objects.cluster_layout, local.local_layout
    seen = {}

    def cluster_layout(*args, **kwargs):
        seen["cluster"] = real_cluster(*args, **kwargs)
        return placeholders(seen["cluster"])

    def local_layout(*args, **kwargs):
        seen["local"] = real_local(*args, **kwargs)
        return placeholders(seen["local"])

    monkeypatch.setattr(objects, "cluster_layout", cluster_layout)
    monkeypatch.setattr(jobs, "cluster_layout", cluster_layout)  # imported by name there
    monkeypatch.setattr(local, "local_layout", local_layout)
    return cluster_processes(m), local_processes(m, tmp_path / ".hardened"), seen["cluster"], seen["local"]


@pytest.mark.parametrize("name", SPECS)
def test_every_process_runs_the_same_command_line_in_the_cluster_and_locally(name, tmp_path, monkeypatch):
    cluster, here, cluster_layout, local_layout = both(name, tmp_path, monkeypatch)
    assert set(cluster) == set(here) == {"trainer", "verify", "model", "validation", "ratelimit"}
    for process in cluster:
        switched = [flag for field, flags in LAYOUT_SWITCHED.get(process, {}).items()
                    if getattr(cluster_layout, field) is None or getattr(local_layout, field) is None
                    for flag in flags] + list(KUBELET_RECORD.get(process, ()))
        assert without(cluster[process], switched) == without(here[process], switched), process


def test_the_layout_switched_flags_are_where_each_layout_has_them(tmp_path, monkeypatch):
    cluster, here, _, _ = both("eks-s3-irsa", tmp_path, monkeypatch)
    assert cluster["verify"][cluster["verify"].index("--uri") + 1] == "<artifact_uri>" and "--uri" not in here["verify"]
    assert "--termination-log" in cluster["verify"] and "--termination-log" not in here["verify"]
    assert "--termination-log" in here["trainer"] and "--termination-log" not in cluster["trainer"]
    assert cluster["model"][cluster["model"].index("--cpu-threads") + 1] == "<cpu_threads>"


def test_only_the_cluster_passes_the_kubelets_record_of_the_training_pod(tmp_path, monkeypatch):
    cluster, here, _, _ = both("provenance", tmp_path, monkeypatch)
    assert cluster["verify"][cluster["verify"].index("--observed-trainer-image") + 1] == RAN["image"]
    assert cluster["verify"][cluster["verify"].index("--observed-trainer-image-id") + 1] == RAN["imageID"]
    assert not any(a.startswith("--observed") for argv in here.values() for a in argv)


# Flags only the serving pods' init container gets, and only with the operator's platform key (issue 27): the
# verify Job makes the report the platform signs, and `up` has no platform step. The init container is not
# among the processes compared above (its command line is the verify Job's with the gates left out).
COUNTERSIGNATURE = ("--countersignature", "--platform-public-key-pem", "--expect-model")


def test_neither_up_nor_the_verify_job_passes_the_platform_countersignature(tmp_path, monkeypatch):
    cluster, here, _, _ = both("provenance", tmp_path, monkeypatch)
    assert not any(a in COUNTERSIGNATURE for argv in [*cluster.values(), *here.values()] for a in argv)

@pytest.mark.parametrize("name", SPECS)
def test_local_command_lines_parse_with_the_programs_own_parsers(name, tmp_path):
    from hardened_operator.cli import build_parser
    from hardened_trainer.__main__ import get_args_parser

    m = model(name)
    ports = {f: 20000 + i for i, f in enumerate(PORT_FIELDS)}
    runner = LocalRunner(m, root=tmp_path)
    layout = runner.layout(ports)
    train = runner.train_argv()
    if commands.world(m) is not None:  # torchrun's own parser, then the trainer's with what it passes on
        from torch.distributed.run import get_args_parser as torchrun_parser

        launch = torchrun_parser().parse_args(train[3:])
        assert (launch.module, launch.training_script, launch.max_restarts) == (True, "hardened_trainer", 0)
        get_args_parser().parse_args(launch.training_script_args)
    else:
        get_args_parser().parse_args(train[len(layout.trainer):])
    parser = build_parser()
    parsed = {n: parser.parse_args(argv[len(layout.server):])
              for n, argv in {"verify": runner.verify_argv(), **runner.serving_argvs(DIGEST, ports)}.items()}
    assert parsed["model"].port == ports["model_port"] and parsed["ratelimit"].port == ports["ratelimit_port"]
    assert {p.host for p in parsed.values() if hasattr(p, "port")} == {"127.0.0.1"}  # a laptop's, not the LAN's


def _cluster_source(pod, container, path):
    folder, file = path.rsplit("/", 1)
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == folder)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    source = volume.get("secret") or volume.get("configMap")
    return source.get("secretName") or source["name"], next(i["key"] for i in source["items"] if i["path"] == file)


@pytest.mark.parametrize("name", SPECS)
def test_local_files_stand_in_for_the_secrets_the_pods_mount(name, tmp_path):
    """``secrets/NAME/KEY`` under the state folder is the Secret (or ConfigMap) NAME's KEY that the pod mounts
    at the same flag: the generated signing Secret included (its name from names(), never a second literal)."""
    m = model(name)
    root = tmp_path / ".hardened"
    cluster, here = objects.cluster_layout(m), LocalRunner(m, root=root).layout()
    pod = objects.build_deployment(m, digest=DIGEST, version=names(m).version)["spec"]["template"]["spec"]
    by_name = {c["name"]: c for c in pod["containers"]}
    s = m.spec.serving
    checks = [("public_key", by_name["model"])]
    if s.auth.api_keys and s.api_keys_secret:  # a generated key lives in .hardened/<model>/api-keys
        checks.append(("api_keys", by_name["ratelimit"]))
    if s.auth.jwt:
        checks.append(("jwks", by_name["ratelimit"]))
    if s.tls:
        checks += [("tls_cert", by_name["ratelimit"]), ("tls_key", by_name["ratelimit"])]
    if s.tls and s.tls.client_ca_secret:
        checks.append(("client_ca", by_name["ratelimit"]))
    for field, container in checks:
        want = _cluster_source(pod, container, getattr(cluster, field))
        assert pathlib.Path(getattr(here, field)).relative_to(root / "secrets").parts == want, field
    if m.spec.signing.public_key_secret is None:
        assert pathlib.Path(here.public_key).parent.name == names(m).signing_secret


def _flags():
    found = set()
    for name in SPECS:
        m = model(name)
        for layout in (objects.cluster_layout(m), local.local_layout(m, local.Paths(pathlib.Path("state"), m))):
            argvs = [commands.trainer(m, layout), commands.verify(m, layout, digest=DIGEST, version_ids={"k": "v"},
                                                               observed_trainer=RAN),
                     *commands.serving(m, layout, digest=DIGEST).values()]
            found |= {a for argv in argvs for a in argv if a.startswith("--")}
    return found


def test_no_process_flag_is_written_outside_the_command_builder():
    flags = _flags()
    assert {"--gates", "--provenance-policy", "--model-dir", "--expect-digest", "--api-keys", "--version-ids",
            "--termination-log", "--metrics-host", "--config", "--tls-cert", "--cpu-threads",
            *KUBELET_RECORD["verify"]} <= flags
    for path in (OPERATOR / "manifests" / "objects.py", OPERATOR / "local.py"):
        text = path.read_text()
        written = {flag for flag in flags if re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text)}
        assert not written, f"{path.name} writes {sorted(written)}: build them in manifests/commands.py"
    # nor a child's name beside names()
    assert not re.search(r"metadata\.name\}-", (OPERATOR / "local.py").read_text())


def test_a_flag_the_spec_needs_from_a_place_the_layout_lacks_is_an_error(tmp_path):
    doc = copy.deepcopy(SPECS["digits-demo"])
    doc["spec"]["signing"] = {"method": "keyless", "keyless": {
        "identity": "trainer@acme.test", "oidcIssuer": "https://oidc.acme.test",
        "trustConfig": {"kind": "Secret", "name": "private-sigstore", "key": "trust.json"}}}
    m = parse_manifest(doc)
    with pytest.raises(ValueError, match="trust_config"):
        commands.verify(m, LocalRunner(m, root=tmp_path).layout())


def test_json_flags_have_one_form():
    assert commands.json_arg({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
    assert commands.json_arg({"b": 1, "a": 2}, spaced=True) == '{"a": 2, "b": 1}'


def _flag(argv, flag):
    return argv[argv.index(flag) + 1]


def test_the_world_is_the_same_in_the_cluster_and_locally(tmp_path):
    """training.distributed: the cluster runs nodes pods of processesPerNode ranks meeting at pod 0, `up` every
    rank on this machine: the same world size, so the same shards, sample rate and model."""
    m = model("digits-distributed")
    cluster = cluster_processes(m)["trainer"]
    here = local_processes(m, tmp_path / ".hardened")["trainer"]
    assert int(_flag(cluster, "--nnodes")) * int(_flag(cluster, "--nproc-per-node")) == 2
    assert _flag(cluster, "--node-rank") == "$(JOB_COMPLETION_INDEX)"
    job = names(m).train
    assert (_flag(cluster, "--master-addr"), _flag(cluster, "--master-port")) == (f"{job}-0.{job}", "29500")
    assert "--standalone" in here and (_flag(here, "--nnodes"), _flag(here, "--nproc-per-node")) == ("1", "2")
    for argv in (cluster, here):
        assert argv[argv.index("--max-restarts"):argv.index("--config")] == [
            "--max-restarts", "0", "--module", "hardened_trainer"]


@pytest.mark.parametrize("distributed, gpus, launch", [
    ({"nodes": 1, "processesPerNode": 2}, 0, ["--standalone", "--nnodes", "1", "--nproc-per-node", "2"]),
    ({"nodes": 1}, 4, ["--standalone", "--nnodes", "1", "--nproc-per-node", "4"]),  # one rank per GPU
    ({"nodes": 3}, 2, ["--nnodes", "3", "--nproc-per-node", "2"]),
])
def test_processes_per_node_defaults_to_the_pods_gpus(distributed, gpus, launch):
    doc = copy.deepcopy(SPECS["digits-demo"])
    doc["spec"]["training"].update(distributed=distributed, resources={"gpus": gpus})
    m = parse_manifest(doc)
    args = jobs.build_training_job(m)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:len(launch)] == launch
