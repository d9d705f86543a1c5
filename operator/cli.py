"""`pagoda operator` and `pagoda fetch-model`.

Imports here stay light (no kopf, no kubernetes client at import time):
`pagoda fetch-model` runs in the engine image, which has neither.
"""

from __future__ import annotations

import argparse
import logging

from . import fetch

LOG_FORMATS = ("json", "full", "plain")
#: Beside kopf's liveness endpoint (8080).
METRICS_PORT = 8081


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "operator", help="run the operator that reconciles LLMDeployment resources",
        description="Runs the pagoda operator (kopf). Settings not given here come from "
                    "PAGODA_OPERATOR_* environment variables (see pagoda.operator.config).")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", dest="namespaces", metavar="NS",
                       help="watch this namespace (repeatable; glob patterns allowed); default: all namespaces")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    parser.add_argument("--peering", metavar="NAME",
                        help="coordinate replicas through this kopf peering object (leader election); "
                             "without it the operator runs standalone")
    parser.add_argument("--priority", type=int, default=0,
                        help="peering priority: the highest-priority replica is active, the others wait")
    parser.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", metavar="URL",
                        help="serve a liveness endpoint here ('' to disable)")
    parser.add_argument("--metrics-port", type=int, default=METRICS_PORT, metavar="PORT",
                        help="serve Prometheus metrics (pagoda.operator.metrics) at /metrics on this port "
                             "(0 to disable)")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="json")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    parser.set_defaults(func=run)
    fetch.add_cli(subparsers)


def run(args: argparse.Namespace) -> int:
    """Runs the operator until interrupted."""
    import kopf

    from .config import OperatorConfig
    from .handlers import register
    from .metrics import OperatorMetrics

    config = OperatorConfig.from_env()
    metrics = OperatorMetrics()
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    kopf.configure(verbose=args.verbose, log_format=getattr(kopf.LogFormat, args.log_format.upper()),
                   log_prefix=True)
    logging.getLogger("pagoda").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    registry = kopf.OperatorRegistry()
    register(registry, config, metrics)
    kopf.run(
        registry=registry,
        clusterwide=not args.namespaces,
        namespaces=args.namespaces or (),
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=args.priority,
        liveness_endpoint=args.liveness or None,
    )
    return 0
