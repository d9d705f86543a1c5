"""Replicas over several machines on a real API server: the operator's
LeaderWorkerSet is accepted by the pinned sigs.k8s.io/lws CRD, and a cluster
without it gets a Degraded resource instead of a failing operator.

Only the CRD is installed, no LWS controller: no group of pods starts, so
nothing here waits for readiness. The test without the CRD runs first (file
order); on a cluster that already has it, it skips.
"""

from __future__ import annotations

from typing import Any

import pytest

from e2e.cluster import build, lws
from e2e.cluster.client import Cluster
from pagoda.operator.manifests import leaderworkerset

from .stack import llm_deployment
from .test_reconcile import CONVERGE_S, condition

LWS = "leaderworkersets.leaderworkerset.x-k8s.io"
MULTI_NODE = {"engine": {"tensorParallelSize": 2, "nnodes": 2},
              "modelCache": {"size": "1Gi", "accessModes": ["ReadWriteMany"]},
              "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 2}}


def _serves_lws(cluster: Cluster) -> bool:
    listing = cluster.kubectl("api-resources", f"--api-group={leaderworkerset.API_VERSION.split('/')[0]}", "-o", "name")
    return bool(listing.stdout.strip())


@pytest.fixture(scope="module")
def lws_crd(cluster: Cluster) -> None:
    """The pinned LeaderWorkerSet CRD, installed once (and left: deleting a CRD deletes every object of it)."""
    try:
        path = lws.crd_path()
    except build.BuildError as exc:
        pytest.skip(f"the LeaderWorkerSet CRD ({lws.MODULE}) is not available: {exc}")
    cluster.kubectl("apply", "--server-side", "-f", str(path))
    cluster.wait_for("the LeaderWorkerSet CRD established", lambda: any(
        c["type"] == "Established" and c["status"] == "True"
        for c in (cluster.get("crd", LWS) or {}).get("status", {}).get("conditions") or []))


def test_without_the_crd_a_multi_node_resource_is_degraded(cluster: Cluster, namespace: str) -> None:
    if _serves_lws(cluster):
        pytest.skip("this cluster already serves LeaderWorkerSet")
    cluster.apply(llm_deployment("wide", **MULTI_NODE), namespace=namespace)
    degraded = cluster.wait_for("Degraded LeaderWorkerSetNotInstalled", lambda: (
        c := condition(cluster, namespace, "wide", "Degraded")).get("reason") == "LeaderWorkerSetNotInstalled" and c,
        timeout=CONVERGE_S)
    assert degraded["status"] == "True" and lws.MODULE in degraded["message"]
    assert cluster.get("service", "wide", namespace)  # the rest is still applied


def test_multi_node_replicas_are_a_leaderworkerset_and_back(cluster: Cluster, namespace: str, lws_crd: None) -> None:
    cluster.apply(llm_deployment("wide", **MULTI_NODE), namespace=namespace)
    group = cluster.wait_for("the LeaderWorkerSet", lambda: cluster.get(LWS, "wide", namespace), timeout=CONVERGE_S)
    template = group["spec"]["leaderWorkerTemplate"]
    assert (group["spec"]["replicas"], template["size"]) == (1, 2)  # replicas: the CRD's default, then the HPA's
    assert template["restartPolicy"] == "RecreateGroupOnPodRestart"
    worker_args = template["workerTemplate"]["spec"]["containers"][0]["args"]
    assert worker_args[-1] == "--headless" and "$(LWS_WORKER_INDEX)" in worker_args
    assert cluster.get("deployment.apps", "wide", namespace) is None
    selector = cluster.get("service", "wide", namespace)["spec"]["selector"]
    assert selector[leaderworkerset.WORKER_INDEX_LABEL] == "0"
    target = cluster.get("horizontalpodautoscaler.autoscaling", "wide", namespace)["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": leaderworkerset.API_VERSION, "kind": "LeaderWorkerSet", "name": "wide"}
    degraded = cluster.wait_for("status", lambda: condition(cluster, namespace, "wide", "Degraded"), timeout=CONVERGE_S)
    assert degraded["status"] == "False", degraded

    single: dict[str, Any] = MULTI_NODE | {"engine": {"tensorParallelSize": 2}}
    cluster.apply(llm_deployment("wide", **single), namespace=namespace)
    cluster.wait_for("the Deployment", lambda: cluster.get("deployment.apps", "wide", namespace), timeout=CONVERGE_S)
    cluster.wait_for("the LeaderWorkerSet removed", lambda: cluster.get(LWS, "wide", namespace) is None,
                     timeout=CONVERGE_S)
    assert leaderworkerset.WORKER_INDEX_LABEL not in cluster.get("service", "wide", namespace)["spec"]["selector"]
    target = cluster.get("horizontalpodautoscaler.autoscaling", "wide", namespace)["spec"]["scaleTargetRef"]
    assert target["kind"] == "Deployment"
