"""`pagoda gateway`: the cluster's OpenAI endpoint in front of every LLMDeployment."""

from __future__ import annotations

import argparse
import logging

from .balancer import DEFAULT_LOAD_FACTOR, STRATEGIES
from .settings import GatewaySettings

PORT = 8000


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gateway", help="route OpenAI requests by model to the LLMDeployments' pods, prefix-aware",
        description="One OpenAI-compatible endpoint for every model: a request goes to a ready pod of the "
                    "LLMDeployment serving its `model` (or an adapter's name), chosen so that requests "
                    "sharing a prompt prefix meet the replica that has it cached.")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", dest="namespaces", metavar="NS",
                       help="route to LLMDeployments of this namespace (repeatable); default: every namespace")
    scope.add_argument("--backend", action="append", dest="backends", metavar="MODEL=URL",
                       help="route MODEL to an engine at URL instead of watching Kubernetes (repeatable; "
                            "a model given twice is balanced over both)")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--routing", choices=STRATEGIES, default="prefix-hash",
                        help="prefix-hash: requests sharing a prompt prefix go to the same replica unless it is "
                             "loaded past --load-factor times the mean; least-load; round-robin")
    parser.add_argument("--load-factor", type=float, default=DEFAULT_LOAD_FACTOR,
                        help="prefix-hash: the most in-flight requests a replica takes, as a multiple of the mean")
    defaults = GatewaySettings()
    parser.add_argument("--session-header", default=defaults.session_header, metavar="NAME",
                        help="a request header (e.g. x-user-id) whose value, when present, routes instead of the "
                             "prompt: every request of a session meets the same replica")
    parser.add_argument("--prefix-chars", type=int, default=defaults.prefix_chars,
                        help="characters of the prompt (a chat's first user message) that make its routing key")
    parser.add_argument("--endpoint-wait", type=float, default=defaults.endpoint_wait_s, metavar="SECONDS",
                        help="how long a request waits for its model's first ready replica before a 503")
    parser.add_argument("--activation-wait", type=float, default=defaults.activation_wait_s, metavar="SECONDS",
                        help="how long a request for a model scaled to zero waits for its first replica")
    parser.add_argument("--activity-interval", type=float, default=defaults.activity_interval_s, metavar="SECONDS",
                        help="how often models in use are stamped for the operator's scale to zero")
    parser.add_argument("--engine-load-interval", type=float, default=defaults.engine_load_interval_s,
                        metavar="SECONDS", help="how often each engine's running and waiting requests are read from "
                                                "its /metrics, for balancing (0: the gateway's own counts only)")
    parser.add_argument("--max-attempts", type=int, default=defaults.max_attempts,
                        help="replicas tried per request when one cannot be reached or its queue is full")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serves until interrupted."""
    from aiohttp import web

    from . import routes
    from .balancer import Balancer
    from .metrics import GatewayMetrics
    from .proxy import Gateway

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = GatewaySettings(prefix_chars=args.prefix_chars, session_header=args.session_header, endpoint_wait_s=args.endpoint_wait,
                               activation_wait_s=args.activation_wait, max_attempts=args.max_attempts,
                               engine_load_interval_s=args.engine_load_interval,
                               activity_interval_s=args.activity_interval)
    balancer = Balancer(args.routing, args.load_factor)
    discovery = None
    if args.backends:
        gateway = Gateway(balancer, GatewayMetrics(), settings)
        gateway.set_table(routes.static(args.backends))
    else:
        from ..kube import Kube
        from .activity import ActivityReporter
        from .discovery import Discovery

        kube = Kube.connect()
        gateway = Gateway(balancer, GatewayMetrics(), settings,
                          activity=ActivityReporter(kube, settings.activity_interval_s))
        discovery = Discovery(kube, args.namespaces or [], lambda table: gateway.set_table(
            table, synced=discovery is not None and discovery.synced))
        discovery.start()
    try:
        # A client that disconnects cancels its handler, which closes the upstream request.
        web.run_app(gateway.app(), host=args.host, port=args.port, handler_cancellation=True,
                    access_log=None, print=None)
    finally:
        if discovery is not None:
            discovery.stop()
    return 0
