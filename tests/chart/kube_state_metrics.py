"""What kube-state-metrics exports about one LLMDeployment's objects, for the
fleet dashboard's panels.

The test's Prometheus scrapes this exposition beside a real `pagoda serve`:
kube-state-metrics itself needs a cluster with real Deployments, HPAs and
pods, which these tests do not start. Names and labels are those of
kube-state-metrics v2 (docs/metrics/workload/*.md); pod labels appear as
label_<sanitised key> when kube-state-metrics runs with
--metric-labels-allowlist=pods=[pagoda.dev/llmdeployment].
"""

from __future__ import annotations


def exposition(namespace: str, name: str, pod: str) -> str:
    """The series for LLMDeployment `name` with one ready pod of two, one GPU each."""
    families = {
        "kube_deployment_spec_replicas": [({"deployment": name}, 2)],
        "kube_deployment_status_replicas_ready": [({"deployment": name}, 1)],
        "kube_horizontalpodautoscaler_spec_target_metric": [(
            {"horizontalpodautoscaler": name, "metric_name": "pagoda_requests_waiting",
             "metric_target_type": "average"}, 4)],
        "kube_pod_container_resource_requests": [(
            {"pod": pod, "container": "engine", "node": "gpu-node-0", "resource": "nvidia_com_gpu",
             "unit": "integer"}, 1)],
        "kube_pod_labels": [({"pod": pod, "label_pagoda_dev_llmdeployment": name}, 1)],
    }
    lines = []
    for family, samples in families.items():
        lines.append(f"# TYPE {family} gauge")
        for labels, value in samples:
            text = ",".join(f'{k}="{v}"' for k, v in {"namespace": namespace, **labels}.items())
            lines.append(f"{family}{{{text}}} {value}")
    return "\n".join(lines) + "\n"


#: The kube-state-metrics families the dashboards may read.
FAMILIES = tuple(line.split()[2] for line in exposition("ns", "x", "p").splitlines() if line.startswith("# TYPE"))
