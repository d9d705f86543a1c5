"""`pagoda serve MODEL_DIR`: the OpenAI-compatible server."""

from __future__ import annotations

import argparse


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    # Without the server extra these imports fail and pagoda.cli leaves the command out.
    import fastapi  # noqa: F401
    import prometheus_client  # noqa: F401
    import uvicorn  # noqa: F401

    from pagoda.engine.entrypoints.args import add_serve_arguments

    parser = subparsers.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API")
    add_serve_arguments(parser)
    parser.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from pagoda.engine.entrypoints.api_server import run_server
    from pagoda.engine.entrypoints.args import settings_or_exit

    return run_server(settings_or_exit(args, "serve"))
