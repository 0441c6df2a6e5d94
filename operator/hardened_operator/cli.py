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

    sys.stdout.write(render_crd_yaml())
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    from .spec import SpecError, load_manifest

    status = EXIT_OK
    for path in args.files:
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
            print(f"{path}: valid HardenedModel {model.metadata.namespace}/{model.metadata.name}")
    return status


def _cmd_train(args: argparse.Namespace) -> int:
    from hardened_trainer.__main__ import main as train_main

    return train_main(args.rest)


# Subcommands that hand their own arguments to another program's parser.
PASSTHROUGH = {"train"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hardened-model",
        description="Train, sign, verify and serve hardened models, in a cluster or on one machine.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("crd", help="print the HardenedModel CustomResourceDefinition (YAML)")
    p.set_defaults(func=_cmd_crd)

    p = sub.add_parser("validate", help="check HardenedModel files as the CRD and the operator do")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("train", help="run the trainer: hardened-model train --config train.json", add_help=False)
    p.set_defaults(func=_cmd_train)
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
