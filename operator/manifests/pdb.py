"""A PodDisruptionBudget: node drains take engine replicas down one at a time."""

from __future__ import annotations

from typing import Any

from ..config import OperatorConfig
from ..v1alpha1 import LLMDeployment
from .meta import metadata, selector_labels


def render(resource: LLMDeployment, config: OperatorConfig) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(resource),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(resource)},
            # A pod that never became ready (crash-looping, no GPU) may always
            # be evicted: it serves nothing, and keeping it would block drains.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
