"""Operator-wide configuration, read once from the environment.

Every knob that is not part of an `LLMDeployment` (which engine image to use
when a resource names none, how GPUs are called on this cluster, ...) lives
here with its default, so the chart, the CLI and the tests agree on one
definition.  The Helm chart sets these as environment variables of the
operator Deployment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

#: Prefix of every environment variable the operator reads.
ENV_PREFIX = "PAGODA_OPERATOR_"


@dataclass(frozen=True)
class OperatorConfig:
    """Settings of one operator process; immutable so handlers can share it."""

    #: Engine image used when `spec.image` is empty.
    default_image: str = "ghcr.io/pagoda-dev/pagoda-engine:0.1.0"
    #: Extended resource that counts GPUs on this cluster's nodes.
    gpu_resource_name: str = "nvidia.com/gpu"
    #: DNS suffix of in-cluster Service names, used for `status.endpoint`.
    cluster_domain: str = "cluster.local"
    #: Seconds between periodic reconciles of every resource (drift repair,
    #: status refresh) even when no watch event arrives.
    resync_seconds: float = 60.0
    #: First retry delay when a dependency (secret, claim) is missing; it
    #: doubles on each retry up to `max_backoff_seconds`.
    backoff_seconds: float = 5.0
    max_backoff_seconds: float = 300.0
    #: UID/GID the engine containers run as (the image's non-root user).
    run_as_user: int = 1000

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        """Builds the configuration from `PAGODA_OPERATOR_<FIELD>` variables.

        Unknown variables with the prefix are refused, so that a typo in the
        chart fails loudly instead of silently keeping a default.
        """
        environ = os.environ if environ is None else environ
        known = {f.name: f for f in fields(cls)}
        values: dict[str, object] = {}
        for key, raw in environ.items():
            if not key.startswith(ENV_PREFIX):
                continue
            name = key[len(ENV_PREFIX):].lower()
            if name not in known:
                raise ValueError(f"unknown operator setting {key}; known: "
                                 + ", ".join(ENV_PREFIX + n.upper() for n in known))
            kind = type(getattr(cls, name))
            try:
                values[name] = kind(raw)
            except ValueError as exc:
                raise ValueError(f"{key}={raw!r}: expected {kind.__name__}") from exc
        return cls(**values)

    def backoff(self, retry: int) -> float:
        """Delay before retry number `retry` (0-based) of a blocked reconcile."""
        return min(self.backoff_seconds * (2 ** retry), self.max_backoff_seconds)
