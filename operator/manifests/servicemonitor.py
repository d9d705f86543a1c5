"""A prometheus-operator ServiceMonitor scraping the engines' /metrics.

Rendered only when the cluster has the ServiceMonitor CRD; the pods also
carry prometheus.io annotations for annotation-based scrapers.
"""

from __future__ import annotations

from typing import Any

from .. import flags
from ..config import OperatorConfig
from ..v1alpha1 import LLMDeployment
from .meta import metadata, selector_labels

API_VERSION = "monitoring.coreos.com/v1"
KIND = "ServiceMonitor"


def render(resource: LLMDeployment, config: OperatorConfig) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata(resource),
        "spec": {
            "selector": {"matchLabels": selector_labels(resource)},
            "namespaceSelector": {"matchNames": [resource.namespace]},
            "endpoints": [{"port": "http", "path": flags.METRICS_PATH, "interval": "15s"}],
        },
    }
