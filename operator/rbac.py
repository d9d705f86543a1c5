"""The operator's least-privilege RBAC, listed once.

Each rule says why it exists; the Helm chart's ClusterRole must grant exactly
these (a chart test compares them), and the integration tests run the
operator under a ServiceAccount bound to nothing else.

    python -m pagoda.operator.rbac        # prints the ClusterRole
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from . import v1alpha1
from .manifests import servicemonitor

#: Creating through server-side apply needs both create and patch.
_APPLY = ["get", "list", "watch", "create", "patch"]

#: (apiGroup, resources, verbs, why)
RULES: list[tuple[str, list[str], list[str], str]] = [
    (v1alpha1.GROUP, [v1alpha1.PLURAL], ["get", "list", "watch", "patch"],
     "watch the resources; kopf keeps its bookkeeping in their annotations"),
    (v1alpha1.GROUP, [f"{v1alpha1.PLURAL}/status"], ["get", "patch"], "report status"),
    ("apps", ["deployments"], _APPLY, "the engine Deployment"),
    ("", ["services", "persistentvolumeclaims"], _APPLY, "the Service and the model cache claim"),
    ("autoscaling", ["horizontalpodautoscalers"], [*_APPLY, "delete"], "the HPA, removed when autoscaling is off"),
    ("policy", ["poddisruptionbudgets"], _APPLY, "the PodDisruptionBudget"),
    (servicemonitor.API_VERSION.split("/")[0], ["servicemonitors"], ["get", "create", "patch", "delete"],
     "the ServiceMonitor, where prometheus-operator is installed"),
    ("", ["pods"], ["get", "list", "watch"], "read why pods do not serve (status.conditions)"),
    ("", ["events"], ["list", "create", "patch"], "read pods' Warning events; post the resource's events"),
    ("", ["secrets"], ["get"], "check that the Secrets a resource names exist and hold their key (never list)"),
    ("apiextensions.k8s.io", ["customresourcedefinitions"], ["list", "watch"], "kopf's resource discovery"),
    ("", ["namespaces"], ["list", "watch"], "kopf's namespace discovery when watching patterns"),
    ("kopf.dev", ["clusterkopfpeerings", "kopfpeerings"], ["get", "list", "watch", "patch"],
     "peering between operator replicas (--peering)"),
]


def cluster_role(name: str = "pagoda-operator") -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "pagoda"}},
        "rules": [{"apiGroups": [group], "resources": list(resources), "verbs": list(verbs)}
                  for group, resources, verbs, _ in RULES],
    }


if __name__ == "__main__":
    sys.stdout.write(yaml.safe_dump(cluster_role(), sort_keys=False))
