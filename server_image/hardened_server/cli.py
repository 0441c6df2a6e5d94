"""The serving image's commands: `python -m hardened_server verify | serve | validate-proxy | ratelimit-proxy`.

The same subcommands appear in `hardened-model` (hardened_operator.cli adds them), for `hardened-model up` and
development; the serving image installs only this package and the core, so its pods run this parser.
"""
from __future__ import annotations

import argparse
import sys


def _async(module: str):
    def run(args: argparse.Namespace) -> int:
        import asyncio
        import importlib

        return asyncio.run(importlib.import_module(module).run(args))
    return run


def _serve_model(args: argparse.Namespace) -> int:
    import asyncio
    import pathlib

    from hardened_model.signing import MODEL_DIR_NAME, SIGNATURE_NAME
    from . import model_server

    args.model_dir = str(pathlib.Path(args.artifact) / MODEL_DIR_NAME)
    args.signature = str(pathlib.Path(args.artifact) / SIGNATURE_NAME)
    return asyncio.run(model_server.run(args))


def _cmd_verify(args: argparse.Namespace) -> int:
    from .verify import run

    return run(args)


def _trust_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("trust policy (exactly one of --public-key, --public-key-pem or --identity)")
    g.add_argument("--public-key", help="PEM public key the signature must verify with (default: none)")
    g.add_argument("--public-key-pem", action="append", default=[],
                   help="a trusted public key's PEM itself, not a path (a HardenedModelPolicy's trust.publicKeys); "
                        "repeated: any of them may verify (default: none)")
    g.add_argument("--identity", help="Sigstore keyless: expected certificate identity (default: none)")
    g.add_argument("--oidc-issuer", help="Sigstore keyless: expected OIDC issuer URL (default: none)")
    g.add_argument("--trust-config", help="Sigstore ClientTrustConfig JSON; default: the production trust root "
                                          "bundled with sigstore-python, used offline")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _server_args(p: argparse.ArgumentParser, port: int, metrics_port: int) -> None:
    p.add_argument("--host", default="127.0.0.1", help="listen address (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=port, help=f"listen port (default: {port})")
    p.add_argument("--metrics-port", type=int, default=metrics_port,
                   help=f"admin port: Prometheus /metrics and the probes /healthz, /readyz (default: {metrics_port})")
    p.add_argument("--metrics-host", help="admin port's listen address (default: --host)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="log level (default: INFO)")
    p.add_argument("--body-timeout", type=float, default=10.0,
                   help="seconds a client has to send a request body before 408 (default: 10)")


def add_commands(sub) -> None:
    """Add the four serving subcommands to an argparse subparsers object."""
    p = sub.add_parser("verify", help="verify a signed model artifact (and its gates); prints one JSON object")
    p.add_argument("--artifact", required=True,
                   help="folder holding model/ and model.sig (the download target with --uri) (default: none)")
    p.add_argument("--uri", help="s3://bucket/prefix/model/version to download first (default: none)")
    p.add_argument("--version-ids", help="JSON {object key: S3 versionId} to pin the download (default: none)")
    p.add_argument("--region", help="S3 region (default: from the environment)")
    p.add_argument("--endpoint", help="S3 endpoint URL (default: AWS)")
    p.add_argument("--expect-digest", help="refuse unless the signed digest is this sha256 (default: none)")
    p.add_argument("--gates", help="spec.gates as JSON, checked against the signed metrics (default: none)")
    p.add_argument("--provenance-policy",
                   help="spec.signing.provenance as JSON, plus dataSha256 (spec.data.sha256), checked against the "
                        "signed model/provenance.json (default: none: the provenance is reported, not required)")
    p.add_argument("--observed-trainer-image",
                   help="the training pod's image reference as the kubelet was told to run it; the provenance's "
                        "trainer image must be this, and allowedTrainerImages judges this, not the trainer's "
                        "claim (default: none: the claim is checked)")
    p.add_argument("--observed-trainer-image-id",
                   help="the training pod's imageID as the kubelet resolved it; a repo digest (...@sha256:...) must "
                        "equal a digest the provenance records (default: none)")
    p.add_argument("--observed-trainer-node",
                   help="the node the training pod ran on, as the scheduler bound it; echoed in the result's "
                        "observedTrainer, which the platform countersignature states (default: none)")
    p.add_argument("--countersignature",
                   help="the platform's DSSE envelope (JSON) for this model: refuse unless it verifies with "
                        "--platform-public-key-pem, its subject is the digest computed here and it names "
                        "--expect-model (default: none: not required)")
    p.add_argument("--platform-public-key-pem", help="the platform key's public PEM itself, not a path "
                                                     "(needed with --countersignature) (default: none)")
    p.add_argument("--expect-model", help="NAMESPACE/NAME the countersignature must name (needed with "
                                          "--countersignature) (default: none)")
    p.add_argument("--explain", action="store_true",
                   help="print the verdict and the signed provenance (data, trainer image, versions) for people "
                        "instead of JSON (default: off)")
    p.add_argument("--termination-log", default=None,
                   help="also write the result here, e.g. /dev/termination-log (default: none)")
    _trust_args(p)
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("serve", help="model server (Open Inference Protocol v2); refuses unverified models")
    p.add_argument("--artifact", required=True, help="folder holding model/ and model.sig (default: none)")
    p.add_argument("--expect-digest", help="refuse unless the signed digest is this sha256 (default: none)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="(default: auto)")
    p.add_argument("--max-batch", type=_positive_int, default=64, help="rows per batched forward pass (default: 64)")
    p.add_argument("--cpu-threads", type=_positive_int, default=1,
                   help="torch threads for CPU inference; the pod passes its CPU request, rounded up (default: 1)")
    _trust_args(p)
    _server_args(p, 8080, 9090)
    p.set_defaults(func=_serve_model)

    p = sub.add_parser("validate-proxy", help="validation sidecar in front of the model server")
    p.add_argument("--config", required=True, help="serving.json (default: none)")
    p.add_argument("--upstream", default="http://127.0.0.1:8080", help="model server URL (default: %(default)s)")
    p.add_argument("--model-dir", help="verified model/ folder, for the out-of-distribution statistics "
                                       "(needed with validation.oodThreshold) (default: none)")
    _server_args(p, 8081, 9091)
    p.set_defaults(func=_async("hardened_server.validation"))

    p = sub.add_parser("ratelimit-proxy", help="API-key and rate-limit sidecar in front of validation")
    p.add_argument("--config", required=True, help="serving.json (default: none)")
    p.add_argument("--api-keys", help="file with one API key per line, `KEY [plan=NAME] [client=ID]`; needed while "
                                      "auth.apiKeys is on (default: none)")
    p.add_argument("--jwks", help="JWKS file for auth.jwt (default: none)")
    p.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS (default: plain HTTP)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert (default: none)")
    p.add_argument("--client-ca", help="PEM CA bundle: require client certificates it signed (default: none)")
    p.add_argument("--upstream", default="http://127.0.0.1:8081", help="validation sidecar URL (default: %(default)s)")
    _server_args(p, 8443, 9092)
    p.set_defaults(func=_async("hardened_server.ratelimit"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hardened_server",
                                     description="Verify and serve a signed, hardened model.")
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
