"""Pure functions from an `LLMDeployment` to the objects that serve it.

Each module renders one kind of child as a plain dict ready for server-side
apply; nothing here talks to the API server, so every manifest is unit-tested
and validated offline against the Kubernetes schemas.
"""

from __future__ import annotations

from typing import Any

from ..config import OperatorConfig
from ..v1alpha1 import LLMDeployment
from . import deployment, hpa, leaderworkerset, pdb, pvc, service, servicemonitor


def render(resource: LLMDeployment, config: OperatorConfig, *, service_monitor: bool = False) -> list[dict[str, Any]]:
    """Every child the resource should have, in the order they are applied.

    The claim comes first so the engine pods find it; they run in a
    Deployment, or in a LeaderWorkerSet when a replica spans several machines;
    the ServiceMonitor only when its CRD exists in the cluster (`service_monitor`).
    """
    workload = leaderworkerset if leaderworkerset.spans_nodes(resource) else deployment
    children = [
        pvc.render(resource, config),
        workload.render(resource, config),
        service.render(resource, config),
        hpa.render(resource, config),
        pdb.render(resource, config),
        servicemonitor.render(resource, config) if service_monitor else None,
    ]
    return [child for child in children if child is not None]
