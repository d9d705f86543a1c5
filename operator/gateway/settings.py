"""The gateway's tunables, apart from the modules that use them so that the
command line reads their defaults without importing the HTTP stack."""

from __future__ import annotations

from dataclasses import dataclass

from . import affinity


@dataclass(frozen=True)
class GatewaySettings:
    #: Characters of the prompt that make its affinity key.
    prefix_chars: int = affinity.DEFAULT_PREFIX_CHARS
    #: A request header whose value, when a request carries it, is its affinity key instead.
    session_header: str | None = None
    #: How long a request waits for a model's first ready endpoint (a rollout, a replica starting).
    endpoint_wait_s: float = 10.0
    #: How long a request for a model scaled to zero waits for its first replica
    #: (scheduling, a model download, loading the weights).
    activation_wait_s: float = 600.0
    #: Endpoints tried per request: the pick, then fall-backs.
    max_attempts: int = 3
    connect_timeout_s: float = 5.0
    #: How long an endpoint that could not be reached is avoided.
    cooldown_s: float = 5.0
    #: Seconds between reads of every engine's load from its /metrics (0: the gateway's own counts only).
    engine_load_interval_s: float = 2.0
    #: Seconds between stamps of a model in use (`activity`); the CRD's smallest
    #: scaleToZeroDelaySeconds (30) leaves room for three.
    activity_interval_s: float = 10.0
