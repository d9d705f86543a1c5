"""`pagoda operator` and `pagoda fetch-model`.

Imports here stay light (no kopf, no kubernetes client at import time):
`pagoda fetch-model` runs in the engine image, which has neither.
"""

from __future__ import annotations

import argparse
import logging
import random

from . import fetch

LOG_FORMATS = ("json", "full", "plain")
#: A crashed active replica is replaced after at most this long (kopf's
#: default is 60 s; controller-runtime's lease is 15 s). Replicas re-announce
#: themselves 5–10 s before it runs out.
PEERING_LIFETIME_S = 20
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
    parser.add_argument("--priority", type=int, default=None,
                        help="peering priority: the highest-priority replica is active, the others wait; "
                             "default: a random one, so identical replicas of one Deployment elect one")
    parser.add_argument("--peering-lifetime", type=int, default=PEERING_LIFETIME_S, metavar="SECONDS",
                        help="how long a replica that stopped announcing itself (crashed, partitioned) "
                             "keeps the others waiting; a replica that exits cleanly leaves at once")
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
    settings = kopf.OperatorSettings()
    settings.peering.lifetime = args.peering_lifetime
    kopf.run(
        registry=registry,
        settings=settings,
        clusterwide=not args.namespaces,
        namespaces=args.namespaces or (),
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=peering_priority(args.priority),
        liveness_endpoint=args.liveness or None,
    )
    return 0


def peering_priority(given: int | None) -> int:
    """`given`, or a random priority: kopf pauses every replica when two share
    the highest priority, so the replicas of one Deployment (one pod template,
    one set of arguments) must each draw their own to elect a single active one."""
    return given if given is not None else random.SystemRandom().randrange(1, 2**31)
