"""The control plane is a real one: scheduling on GPU capacity, controllers,
volume binding, garbage collection, CEL validation, RBAC for tokens.

These run against `kube_cluster` (local by default, PAGODA_CLUSTER=external
for KUBECONFIG's cluster)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import manifests, processes
from e2e.cluster.client import Cluster, KubectlError
from e2e.cluster.launcher import ExternalCluster, LocalCluster

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def namespace(kube_cluster: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube_cluster.kubectl("create", "namespace", name)
    kube_cluster.wait_for(f"default ServiceAccount in {name}",
                          lambda: kube_cluster.get("serviceaccount", "default", name))
    yield name
    kube_cluster.kubectl("delete", "namespace", name, "--wait=false")


def _gpu_deployment(name: str, replicas: int, gpus: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "engine", "image": "pagoda:test",
                                                       "resources": {"limits": {manifests.GPU_RESOURCE: str(gpus)}}}]}}},
    }


def test_simulated_gpu_nodes_are_ready(kube_cluster: Cluster) -> None:
    nodes = kube_cluster.get("nodes", selector="=".join(manifests.NODE_LABEL))["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == sorted(kube_cluster.gpu_nodes)
    for node in nodes:
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True"
        assert node["status"]["allocatable"][manifests.GPU_RESOURCE] == str(kube_cluster.gpus_per_node)


def test_gpu_pods_are_scheduled_and_become_ready(kube_cluster: Cluster, namespace: str) -> None:
    kube_cluster.apply(_gpu_deployment("fits", replicas=2, gpus=kube_cluster.gpus_per_node), namespace=namespace)
    kube_cluster.kubectl("rollout", "status", "deployment/fits", "-n", namespace, "--timeout=60s")
    pods = kube_cluster.get("pods", namespace=namespace, selector="app=fits")["items"]
    nodes = {p["spec"]["nodeName"] for p in pods}
    assert len(nodes) == 2, "each pod takes a whole node's GPUs, so they land on different nodes"
    assert nodes <= set(kube_cluster.gpu_nodes)


def test_too_many_gpus_leave_the_pod_pending_with_the_schedulers_reason(
        kube_cluster: Cluster, namespace: str) -> None:
    kube_cluster.apply(_gpu_deployment("too-big", replicas=1, gpus=kube_cluster.gpus_per_node + 1),
                       namespace=namespace)

    def unschedulable() -> str | None:
        for pod in kube_cluster.get("pods", namespace=namespace, selector="app=too-big")["items"]:
            for cond in pod["status"].get("conditions", []):
                if cond["type"] == "PodScheduled" and cond.get("reason") == "Unschedulable":
                    return cond["message"]
        return None

    message = kube_cluster.wait_for("an Unschedulable pod", unschedulable, timeout=60)
    assert f"Insufficient {manifests.GPU_RESOURCE}" in message


def test_claims_are_bound_and_pods_using_them_run(kube_cluster: Cluster, namespace: str) -> None:
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "cache"},
             "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": kube_cluster.storage_class,
                      "resources": {"requests": {"storage": "5Gi"}}}}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "reader"},
           "spec": {"containers": [{"name": "c", "image": "pagoda:test",
                                    "volumeMounts": [{"name": "cache", "mountPath": "/models"}]}],
                    "volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": "cache"}}]}}
    kube_cluster.apply(claim, pod, namespace=namespace)
    kube_cluster.kubectl("wait", "--for=jsonpath={.status.phase}=Bound", "pvc/cache", "-n", namespace,
                         "--timeout=60s")
    kube_cluster.kubectl("wait", "--for=condition=Ready", "pod/reader", "-n", namespace, "--timeout=60s")
    volume = kube_cluster.get("pvc", "cache", namespace)["spec"]["volumeName"]
    kube_cluster.kubectl("delete", "pod/reader", "pvc/cache", "-n", namespace, "--wait=true", "--timeout=60s")
    kube_cluster.wait_for(f"released volume {volume} to be deleted",
                          lambda: kube_cluster.get("pv", volume) is None, timeout=60)


def test_deleting_an_owner_garbage_collects_its_dependents(kube_cluster: Cluster, namespace: str) -> None:
    kube_cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}}, namespace=namespace)
    owner = kube_cluster.get("configmap", "owner", namespace)
    dependent = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": "dependent", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                                                  "uid": owner["metadata"]["uid"]}]}}
    kube_cluster.apply(dependent, namespace=namespace)
    kube_cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    kube_cluster.wait_for("the dependent to be collected",
                          lambda: kube_cluster.get("configmap", "dependent", namespace) is None, timeout=60)


def _crd(group: str) -> dict[str, Any]:
    rule = {"rule": "self.minReplicas <= self.maxReplicas",
            "message": "minReplicas must not exceed maxReplicas"}
    schema = {"type": "object", "properties": {"spec": {
        "type": "object", "x-kubernetes-validations": [rule],
        "properties": {"minReplicas": {"type": "integer", "default": 1}, "maxReplicas": {"type": "integer"}}}}}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"widgets.{group}"},
            "spec": {"group": group, "scope": "Namespaced",
                     "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                     "versions": [{"name": "v1", "served": True, "storage": True,
                                   "schema": {"openAPIV3Schema": schema}}]}}


def test_cel_rules_and_defaults_of_a_crd_are_enforced(kube_cluster: Cluster, namespace: str) -> None:
    group = f"{namespace}.example.com"
    kube_cluster.apply(_crd(group))
    kube_cluster.kubectl("wait", "--for=condition=Established", f"crd/widgets.{group}", "--timeout=30s")
    try:
        widget = {"apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": "w"}}
        kube_cluster.apply({**widget, "spec": {"maxReplicas": 3}}, namespace=namespace, server_side=True)
        assert kube_cluster.get(f"widgets.{group}", "w", namespace)["spec"]["minReplicas"] == 1
        with pytest.raises(KubectlError) as refused:
            kube_cluster.apply({**widget, "spec": {"minReplicas": 5, "maxReplicas": 3}}, namespace=namespace)
        assert "minReplicas must not exceed maxReplicas" in refused.value.stderr
    finally:
        kube_cluster.kubectl("delete", "crd", f"widgets.{group}", "--wait=false")


def test_service_account_tokens_are_held_to_rbac(kube_cluster: Cluster, namespace: str) -> None:
    kube_cluster.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    config = kube_cluster.service_account_kubeconfig("reader", namespace)
    denied = kube_cluster.kubectl("get", "configmaps", kubeconfig=config, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    kube_cluster.kubectl("create", "role", "read-cm", "--verb=get,list", "--resource=configmaps", "-n", namespace)
    kube_cluster.kubectl("create", "rolebinding", "read-cm", "--role=read-cm",
                         f"--serviceaccount={namespace}:reader", "-n", namespace)
    kube_cluster.wait_for("the RoleBinding to take effect", lambda: kube_cluster.kubectl(
        "get", "configmaps", kubeconfig=config, check=False).returncode == 0, timeout=30)
    assert kube_cluster.kubectl("get", "secrets", kubeconfig=config, check=False).returncode != 0


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PAGODA_CLUSTER") == "external", reason="starts a local control plane")
def test_command_line_starts_a_detached_cluster_and_stops_it(tmp_path: Path) -> None:
    env = {**os.environ, "PAGODA_CLUSTER_DIR": str(tmp_path)}
    cli = [sys.executable, "-m", "e2e.cluster"]
    started = time.monotonic()
    up = subprocess.run([*cli, "up", "--gpu-nodes=1"], env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    elapsed = time.monotonic() - started
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip() == f"export KUBECONFIG={tmp_path / 'admin.kubeconfig'}"
    print(f"cluster-up took {elapsed:.1f}s")
    try:
        state = json.loads((tmp_path / "state.json").read_text())
        assert {p["name"] for p in state["processes"]} >= {"etcd", "kube-apiserver", "kwok"}
        status = subprocess.run([*cli, "status"], env=env, cwd=REPO, capture_output=True, text=True)
        assert status.returncode == 0 and state["server"] in status.stdout
        again = subprocess.run([*cli, "up"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert "already running" in again.stderr
    finally:
        down = subprocess.run([*cli, "down"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert down.returncode == 0
    assert not any(processes.pid_alive(p["pid"]) for p in state["processes"])
    assert subprocess.run([*cli, "status"], env=env, cwd=REPO, capture_output=True).returncode == 1


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PAGODA_CLUSTER") == "external", reason="starts a local control plane")
def test_external_mode_adds_its_nodes_and_class_to_a_cluster_and_removes_them(tmp_path: Path) -> None:
    """PAGODA_CLUSTER=external, with a bare local control plane standing in
    for kind: only the kubeconfig is shared."""
    bare = LocalCluster(tmp_path / "bare", gpu_nodes=0)
    target = bare.start()
    for name in ("kwok", "provisioner"):  # a bare cluster has neither
        bare._process(name).stop()
    external = ExternalCluster(tmp_path / "external", gpu_nodes=1, gpus_per_node=2)
    try:
        cluster = external.start(target.kubeconfig)
        assert cluster.external and cluster.server == target.server
        [node] = target.get("nodes")["items"]
        assert node["status"]["allocatable"][manifests.GPU_RESOURCE] == "2"
        annotations = target.get("storageclass", manifests.STORAGE_CLASS)["metadata"].get("annotations", {})
        assert "storageclass.kubernetes.io/is-default-class" not in annotations
        external.stop()
        assert target.get("nodes")["items"] == []
        assert target.get("storageclass", manifests.STORAGE_CLASS) is None
    finally:
        external.stop()
        bare.stop()
