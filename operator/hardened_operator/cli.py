"""`hardened-model`: one entry point for every part (operator, trainer, server, local runs).

Subcommands import their package lazily, so the operator image does not need
torch and the server image does not need kopf.

Exit codes (shared by every subcommand): 0 success, 2 bad input (spec, config,
arguments), 3 a gate or verification refused the model, 1 anything else.
"""
from __future__ import annotations

import argparse
import sys

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_REFUSED = 0, 1, 2, 3


def _cmd_crd(args: argparse.Namespace) -> int:
    from .crd import render_crd_yaml

    sys.stdout.write(render_crd_yaml("HardenedModelPolicy" if args.policy else "HardenedModel"))
    return EXIT_OK


def _architecture_problem(model) -> str | None:
    """Where models can be built here (torch is installed: a workstation, the trainer or server image), a
    model.architecture that no built-in or installed plugin provides; elsewhere (the operator image, which
    carries no plugins) the trainer says it."""
    import importlib.util

    from hardened_model.architectures import installed, not_installed_message

    name = model.spec.model.architecture
    if importlib.util.find_spec("torch") is None or name in installed():
        return None
    return f"spec.model.architecture: Unsupported value: {name!r}: {not_installed_message(name)}"


def _namespace_labels(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` (kubectl label's form) -> {k: v, k2: v2}."""
    labels = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise argparse.ArgumentTypeError(f"{pair!r} is not key=value")
        labels[key] = value
    return labels


def _file_kind(path: str) -> str | None:
    """The kind of a file's first YAML document, so that validate checks a HardenedModelPolicy file as one."""
    from hardened_model.spec import load_yaml_documents

    try:
        with open(path, encoding="utf-8") as fh:
            docs = load_yaml_documents(fh.read())
    except Exception:  # noqa: BLE001 - unreadable or not YAML: load_manifest says why, in its words
        return None
    return docs[0].get("kind") if docs and isinstance(docs[0], dict) else None


def _cmd_validate(args: argparse.Namespace) -> int:
    from hardened_model.policy import POLICY_KIND, load_policies, violations
    from hardened_model.spec import SpecError, load_manifest

    policies = []
    if args.policy:
        try:
            policies = load_policies(args.policy)
        except OSError as exc:
            print(f"{args.policy}: cannot read: {exc.strerror}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except SpecError as exc:
            for field, msg in exc.problems:  # the field names the file and document
                print(f"{field}: {msg}", file=sys.stderr)
            return EXIT_BAD_INPUT
    status = EXIT_OK
    for path in args.files:
        if _file_kind(path) == POLICY_KIND:
            try:
                for policy in load_policies(path):
                    print(f"{path}: valid {POLICY_KIND} {policy.metadata.name}")
            except SpecError as exc:
                for field, msg in exc.problems:
                    print(f"{field}: {msg}", file=sys.stderr)
                status = EXIT_BAD_INPUT
            continue
        try:
            model = load_manifest(path)
        except OSError as exc:
            print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
            status = EXIT_BAD_INPUT
        except SpecError as exc:
            for field, msg in exc.problems:
                print(f"{path}: {field}: {msg}", file=sys.stderr)
            status = EXIT_BAD_INPUT
        else:
            problem = _architecture_problem(model)
            refused = violations(model, policies, args.namespace_labels)
            if problem:
                print(f"{path}: {problem}", file=sys.stderr)
            for v in refused:
                print(f"{path}: {v}", file=sys.stderr)
            if problem or refused:
                status = EXIT_BAD_INPUT
            else:
                print(f"{path}: valid HardenedModel {model.metadata.namespace}/{model.metadata.name}")
    return status


def _cmd_render(args: argparse.Namespace) -> int:
    import yaml

    from .manifests.render import build_all

    model = _load_or_exit(args.spec)
    objs = build_all(model, digest=args.digest, monitoring_crds=not args.no_monitoring)
    sys.stdout.write("---\n".join(yaml.safe_dump(o, sort_keys=False, width=120) for o in objs))
    return EXIT_OK


def _cmd_data_digest(args: argparse.Namespace) -> int:
    """Read the spec's data exactly as the trainer does and print the sha256 to pin (data.sha256)."""
    import json

    from hardened_trainer.data import DataError, data_digest, load_dataset

    model = _load_or_exit(args.spec)
    d = model.spec.data
    s3 = None
    if d.source.startswith("s3://"):
        from hardened_model.artifacts import s3_client

        s3 = s3_client(region=model.spec.artifacts.region or model.spec.aws.region,  # as the trainer does
                       endpoint=args.endpoint or model.spec.artifacts.endpoint)
    try:
        if d.format == "tabular":
            from hardened_trainer.tabular import data_file

            files = [data_file(d.source, s3, d.version_id)]
        else:
            files = list(load_dataset(d.source, s3_client=s3, version_id=d.version_id).files)
    except DataError as exc:
        print(f"hardened-model data-digest: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    digest = data_digest(files)
    if args.json:
        print(json.dumps({"source": d.source, "sha256": digest, "files": [
            {"name": f.name, "sha256": f.sha256, "size": f.size, **({"versionId": f.version_id} if f.version_id
                                                                    else {})} for f in files]}, sort_keys=True))
    else:
        for f in files:
            print(f"{f.sha256}  {f.name}" + (f"  (versionId {f.version_id})" if f.version_id else ""))
        print(f"data.sha256: {digest}" + ("" if d.sha256 in (None, digest) else f"   (the spec pins {d.sha256})"))
    return EXIT_OK if d.sha256 in (None, digest) else EXIT_REFUSED


def _cmd_operator(args: argparse.Namespace) -> int:
    import os
    import pathlib

    from kopf.cli import main as kopf_main

    from . import peering

    if args.standalone and args.peering:
        print("hardened-model operator: --standalone and --peering exclude each other", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        chosen = peering.decide(standalone=args.standalone, name=args.peering, namespaces=args.namespace,
                                priority=args.priority, lookup=_peering_lookup)
    except peering.PeeringMissing as exc:
        print(f"hardened-model operator: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:  # no kubeconfig, the API server unreachable or refusing
        print(f"hardened-model operator: cannot read the cluster: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    peering.CHOSEN = chosen
    os.environ.setdefault("HARDENED_METRICS_PORT", str(args.metrics_port))
    handlers = pathlib.Path(__file__).with_name("handlers.py")
    argv = ["run", str(handlers), *chosen.kopf_args, f"--liveness=http://0.0.0.0:{args.health_port}/healthz"]
    argv += ["--all-namespaces"] if not args.namespace else [f"--namespace={n}" for n in args.namespace]
    return kopf_main(argv, standalone_mode=False) or 0


def _peering_lookup(name: str, namespaces: list[str] | None) -> bool:
    """Whether the peering object exists, read with the credentials kopf will use."""
    import kubernetes

    from . import peering
    from .kube import load_config

    load_config()
    return peering.exists(kubernetes.client.ApiClient(), name, namespaces)


def _cmd_train(args: argparse.Namespace) -> int:
    from hardened_trainer.__main__ import main as train_main

    return train_main(args.rest)


def _load_or_exit(path: str, *, check_architecture: bool = False):
    from hardened_model.spec import SpecError, load_manifest

    try:
        model = load_manifest(path)
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
    except SpecError as exc:
        for field, msg in exc.problems:
            print(f"{path}: {field}: {msg}", file=sys.stderr)
    else:
        problem = _architecture_problem(model) if check_architecture else None
        if problem is None:
            return model
        print(f"{path}: {problem}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_INPUT)


def _cmd_up(args: argparse.Namespace) -> int:
    import pathlib
    import signal
    import time

    from .uiconsole import UpConsole
    from .local import LocalRunner, StageFailed

    model = _load_or_exit(args.spec, check_architecture=True)
    ui = UpConsole(model)
    runner = LocalRunner(model, root=pathlib.Path(args.state_dir), say=ui.event)
    try:
        with ui:
            result = runner.up(port=args.port)
    except StageFailed as exc:
        ui.failed(exc)
        return exc.code
    except KeyboardInterrupt:
        runner.stop()
        ui.print("[yellow]interrupted: every process stopped[/]")
        return 130
    ui.summary(result)
    if args.detach:
        ui.print(f"running in the background; stop with: hardened-model down {args.spec}")
        return EXIT_OK
    ui.print("serving; press Ctrl-C to stop")
    stop = []
    # Own handlers for both: a process started in the background by a script inherits SIGINT ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))
    while not stop:
        dead = {n: p.returncode for n, p in runner.procs.items() if p.poll() is not None}
        if dead:
            ui.print(f"[red]stopped: {dead} exited; see {runner.paths.home / 'logs'}[/]")
            runner.stop()
            return EXIT_ERROR
        time.sleep(0.5)
    runner.stop()
    ui.print("stopped every process")
    return EXIT_OK


def _state_file(args: argparse.Namespace):
    import pathlib

    model = _load_or_exit(args.spec)
    return pathlib.Path(args.state_dir) / model.metadata.name / "state.json", model


def _cmd_down(args: argparse.Namespace) -> int:
    from .local import stop_from_state

    state, model = _state_file(args)
    if not state.exists():
        print(f"{model.metadata.name}: not running")
        return EXIT_OK
    print(f"{model.metadata.name}: stopped {', '.join(stop_from_state(state)) or 'nothing (already gone)'}")
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    import json
    import os

    state, model = _state_file(args)
    if not state.exists():
        print(f"{model.metadata.name}: not running")
        return EXIT_ERROR
    data = json.loads(state.read_text())
    alive = {}
    for name, pid in data["pids"].items():
        try:
            os.kill(pid, 0)
            alive[name] = "running"
        except ProcessLookupError:
            alive[name] = "exited"
    print(json.dumps({"model": model.metadata.name, "url": data["url"], "digest": data["digest"],
                      "artifact": data["version_dir"], "processes": alive}, indent=2))
    return EXIT_OK if all(v == "running" for v in alive.values()) else EXIT_ERROR


def _cmd_report(args: argparse.Namespace) -> int:
    import pathlib

    from .local import Paths
    from hardened_model.signing import MODEL_DIR_NAME

    model = _load_or_exit(args.spec)
    report = Paths(pathlib.Path(args.state_dir), model).version_dir() / MODEL_DIR_NAME / "report.html"
    if not report.exists():
        print(f"{model.metadata.name}: no report yet (run hardened-model up {args.spec})", file=sys.stderr)
        return EXIT_ERROR
    print(report)
    if args.open:
        import webbrowser

        webbrowser.open(report.as_uri())
    return EXIT_OK


def choose_rollback(name: str, status: dict, *, to: str | None, own: str | None = None) -> str | None:
    """The version `hardened-model rollback` pins: ``to`` when it served this model (status.history), else the
    newest entry that is neither the version serving now nor one a rollback went away from (so a second
    rollback goes further back, not forth). None when that is the spec's ``own`` version: the pin is then
    removed rather than left to take effect at the next spec change. ValueError says why there is none."""
    history = [e for e in (status or {}).get("history") or [] if isinstance(e, dict) and e.get("version")]
    served = [e["version"] for e in history]
    if to is not None:
        if to not in served:
            raise ValueError(f"--to {to}: HardenedModel {name} never served that version (status.history holds "
                             f"{', '.join(served) or 'none'})")
        return None if to == own else to
    serving = history[0]["version"] if history and not history[0].get("servedTo") else None
    left = {e["version"] for e in history if str(e.get("stopped") or "").startswith("rolled back")}
    earlier = [v for v in served if v != serving and v not in left]
    if earlier and earlier[0] == own:
        return None
    if not earlier:
        raise ValueError(f"HardenedModel {name}: no earlier version in status.history to roll back to "
                         f"({'only ' + serving + ' served' if serving else 'nothing served yet'})")
    return earlier[0]


def _cmd_rollback(args: argparse.Namespace) -> int:
    import json

    import kubernetes
    from hardened_model.spec import API_GROUP, API_VERSION, PLURAL

    from .kube import load_config

    load_config()
    namespace = args.namespace
    if namespace is None:
        try:
            namespace = kubernetes.config.list_kube_config_contexts()[1]["context"].get("namespace") or "default"
        except (kubernetes.config.ConfigException, KeyError, TypeError):
            namespace = "default"
    api = kubernetes.client.CustomObjectsApi()
    try:
        model = api.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, args.name)
        from hardened_model.contracts import training_version
        from hardened_model.spec import SpecError, parse_spec

        try:
            own = training_version(parse_spec(model.get("spec") or {}))
        except SpecError:
            own = None
        version = None if args.clear else choose_rollback(args.name, model.get("status") or {}, to=args.to, own=own)
        api.patch_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, args.name,
                                           {"spec": {"serving": {"version": version}}})
    except ValueError as exc:
        print(f"hardened-model rollback: {exc}", file=sys.stderr)
        return 2
    except kubernetes.client.ApiException as exc:
        reason = (json.loads(exc.body or "{}").get("message") if exc.body else None) or exc.reason
        print(f"hardened-model rollback: HardenedModel {namespace}/{args.name}: {reason}", file=sys.stderr)
        return 1
    if version is None:
        print(f"{namespace}/{args.name}: spec.serving.version removed: the spec's own version serves again")
    else:
        print(f"{namespace}/{args.name}: spec.serving.version = {version}: the operator judges its signed metrics "
              "against the gates, and its pods verify the artifact again before it serves")
    return 0


# Subcommands that hand their own arguments to another program's parser.
PASSTHROUGH = {"train"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hardened-model",
        description="Train, sign, verify and serve hardened models, in a cluster or on one machine.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("crd", help="print the HardenedModel CustomResourceDefinition (YAML)")
    p.add_argument("--policy", action="store_true",
                   help="print the HardenedModelPolicy CustomResourceDefinition instead (default: HardenedModel)")
    p.set_defaults(func=_cmd_crd)

    p = sub.add_parser("validate", help="check HardenedModel (and HardenedModelPolicy) files as the CRD, the "
                                        "admission policy and the operator do")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--policy", metavar="FILE",
                   help="also check each model against the HardenedModelPolicy documents of FILE that select the "
                        "namespace (default: no policy)")
    p.add_argument("--namespace-labels", type=_namespace_labels, default={}, metavar="K=V,...",
                   help="the labels of the namespace the models go to, which the policies' namespaceSelector "
                        "reads (default: none, so only policies selecting every namespace, or by NotIn and "
                        "DoesNotExist, apply)")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("train", help="run the trainer: hardened-model train --config train.json", add_help=False)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("operator", help="run the operator (kopf) against the current cluster")
    p.add_argument("--namespace", action="append", help="watch this namespace (repeatable; default: all)")
    p.add_argument("--standalone", action="store_true",
                   help="no peering: this is the only operator (default: peering when the object exists)")
    p.add_argument("--peering", metavar="NAME",
                   help="peer through this kopf peering object, which must exist (default: hardened-model when "
                        "it exists, else standalone)")
    p.add_argument("--priority", type=int,
                   help="kopf peering priority; the highest live one reconciles (default: from the start time, "
                        "so the oldest replica leads)")
    p.add_argument("--health-port", type=int, default=8080, help="liveness endpoint /healthz (default: 8080)")
    p.add_argument("--metrics-port", type=int, default=9090, help="Prometheus /metrics (default: 9090)")
    p.set_defaults(func=_cmd_operator)

    p = sub.add_parser("render", help="print every object the operator would create for a spec (YAML, for review)")
    p.add_argument("spec", help="HardenedModel YAML")
    p.add_argument("--digest", default="digest-of-the-verified-artifact",
                   help="digest to pin in the Deployment (default: a marker; the operator uses the verified one)")
    p.add_argument("--no-monitoring", action="store_true",
                   help="leave out ServiceMonitor and PrometheusRule, as without their CRDs (default: off)")
    p.set_defaults(func=_cmd_render)

    p = sub.add_parser("data-digest", help="read a spec's training data as the trainer does and print the "
                                           "sha256 to pin as data.sha256")
    p.add_argument("spec", help="HardenedModel YAML")
    p.add_argument("--endpoint", help="S3 endpoint URL for an s3:// source (default: the spec's "
                                      "artifacts.endpoint, as the trainer uses, else AWS)")
    p.add_argument("--json", action="store_true", help="print one JSON object (default: sha256sum lines)")
    p.set_defaults(func=_cmd_data_digest)

    p = sub.add_parser("rollback", help="serve an earlier version of a HardenedModel again, without retraining "
                                        "(sets spec.serving.version)")
    p.add_argument("name", help="the HardenedModel")
    p.add_argument("-n", "--namespace", help="its namespace (default: the kubeconfig context's, else default)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--to", metavar="VERSION", help="this version from status.history (default: the newest one "
                                                     "that is not serving now)")
    how.add_argument("--clear", action="store_true", help="remove the pin: the spec's own version serves again "
                                                          "(default: off)")
    p.set_defaults(func=_cmd_rollback)

    p = sub.add_parser("up", help="train, sign, verify and serve a spec on this machine (no cluster)")
    p.add_argument("spec", help="HardenedModel YAML")
    p.add_argument("--state-dir", default=".hardened", help="project-local state folder (default: .hardened)")
    p.add_argument("--port", type=int, help="port of the served endpoint (default: a free port)")
    p.add_argument("--detach", action="store_true", help="leave the servers running and return (default: off)")
    p.set_defaults(func=_cmd_up)
    for name, func, text in [("down", _cmd_down, "stop what `up --detach` started"),
                             ("status", _cmd_status, "show what `up` is serving"),
                             ("report", _cmd_report, "print the HTML robustness report's path")]:
        p = sub.add_parser(name, help=text)
        p.add_argument("spec", help="HardenedModel YAML")
        p.add_argument("--state-dir", default=".hardened", help="project-local state folder (default: .hardened)")
        if name == "report":
            p.add_argument("--open", action="store_true", help="open it in a browser (default: off)")
        p.set_defaults(func=func)

    try:  # verify, serve, validate-proxy, ratelimit-proxy: the server image runs them as `python -m hardened_server`
        from hardened_server.cli import add_commands
    except ImportError:  # an image without the server package
        pass
    else:
        add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in PASSTHROUGH:
        args.rest = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
