"""Queue-depth autoscaling: an autoscaling/v2 HPA on the per-pod queue gauge.

Waiting requests, not CPU or GPU utilisation, say whether a replica is
saturated: a GPU runs near 100% at any batch size, but requests only queue
once the batch is full.
"""

from __future__ import annotations

from typing import Any

from .. import flags
from ..config import OperatorConfig
from ..v1alpha1 import LLMDeployment, ScalingRules
from .leaderworkerset import workload
from .meta import metadata


def quantity(value: float) -> str:
    """A non-negative number as a Kubernetes quantity: 4 -> "4", 0.5 -> "500m"."""
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"


def _rules(rules: ScalingRules) -> dict[str, Any]:
    out: dict[str, Any] = rules.model_dump(by_alias=True, exclude_none=True)
    if not out.get("policies"):
        out.pop("policies", None)
    return out


def render(resource: LLMDeployment, config: OperatorConfig) -> dict[str, Any] | None:
    """The HPA, or None when autoscaling is disabled (then `spec.replicas` rules)."""
    auto = resource.spec.autoscaling
    if not auto.enabled:
        return None
    api_version, kind = workload(resource)
    spec: dict[str, Any] = {
        # A LeaderWorkerSet's scale subresource selects its leaders, the pods that report the queue.
        "scaleTargetRef": {"apiVersion": api_version, "kind": kind, "name": resource.name},
        # An HPA cannot go below one; zero is the operator's (pagoda.operator.scale_to_zero).
        "minReplicas": max(1, auto.min_replicas or 0),
        "maxReplicas": auto.max_replicas,
        "metrics": [{
            "type": "Pods",
            "pods": {
                "metric": {"name": flags.QUEUE_METRIC},
                "target": {"type": "AverageValue", "averageValue": quantity(auto.target_queue_depth)},
            },
        }],
    }
    behavior = {key: _rules(rules) for key, rules in (("scaleUp", auto.scale_up), ("scaleDown", auto.scale_down))
                if rules is not None}
    if behavior:
        spec["behavior"] = behavior
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(resource),
        "spec": spec,
    }
