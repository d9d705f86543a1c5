"""The `pagoda` command line: each part of the product registers its subcommands."""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules with an add_cli(subparsers); each is imported only if its extra is installed,
# so the operator image (no torch) still gets a working `pagoda`.
_COMMAND_MODULES = (
    "pagoda.engine.cli",
    "pagoda.engine.entrypoints.cli",
    "pagoda.engine.entrypoints.run_batch",
    "pagoda.engine.fixtures",
    "pagoda.operator.cli",
    "pagoda.operator.gateway.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pagoda", description="LLM inference on Kubernetes")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        try:
            # add_cli may import its extra's dependencies itself, so it is guarded too.
            importlib.import_module(name).add_cli(subparsers)
        except ModuleNotFoundError as exc:
            if exc.name and (name.startswith(exc.name) or not exc.name.startswith("pagoda")):
                continue  # that part, or a dependency of its extra, is not installed
            raise
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
