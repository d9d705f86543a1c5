"""The Service in front of the serving engine pods: the resource's stable endpoint."""

from __future__ import annotations

from typing import Any

from ..config import OperatorConfig
from ..v1alpha1 import LLMDeployment
from .leaderworkerset import leader_labels
from .meta import metadata, selector_labels


def render(resource: LLMDeployment, config: OperatorConfig) -> dict[str, Any]:
    spec = resource.spec.service
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(resource, annotations=spec.annotations),
        "spec": {
            "type": spec.type,
            "selector": selector_labels(resource) | leader_labels(resource),
            "ports": [{"name": "http", "port": spec.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }
