"""An LLMDeployment's life through the real API server, scheduler and
controllers, with the operator running under the chart's RBAC."""

from __future__ import annotations

from typing import Any

import pytest

from e2e import samples
from e2e.cluster import manifests
from e2e.cluster.client import Cluster, KubectlError
from e2e.stack import OperatorProcess

CHILD_KINDS = ("persistentvolumeclaims", "deployments.apps", "services", "horizontalpodautoscalers.autoscaling")
CONVERGE_S = 90


def _owned(cluster: Cluster, kind: str, namespace: str, owner_uid: str) -> list[dict[str, Any]]:
    items = (cluster.get(kind, namespace=namespace) or {}).get("items", [])
    return [o for o in items if any(r["uid"] == owner_uid for r in o["metadata"].get("ownerReferences", []))]


def _one_owned(cluster: Cluster, kind: str, namespace: str, owner_uid: str) -> dict[str, Any] | None:
    found = _owned(cluster, kind, namespace, owner_uid)
    assert len(found) <= 1, f"more than one {kind} owned by {owner_uid}"
    return found[0] if found else None


def _condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for cond in (obj or {}).get("status", {}).get("conditions", []):
        if cond["type"] == kind:
            return cond
    return {}


def _sample(cluster: Cluster, name: str, **options: Any) -> dict[str, Any]:
    return samples.llm_deployment(name, storage_class=cluster.storage_class, **options)


def _apply(cluster: Cluster, namespace: str, manifest: dict[str, Any]) -> str:
    cluster.apply(manifest, namespace=namespace)
    return cluster.get(samples.PLURAL, manifest["metadata"]["name"], namespace)["metadata"]["uid"]


def _wait_ready(cluster: Cluster, namespace: str, name: str, operator: OperatorProcess) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        obj = cluster.get(samples.PLURAL, name, namespace)
        status = (obj or {}).get("status", {})
        current = status.get("observedGeneration") == obj["metadata"]["generation"] if obj else False
        return obj if current and _condition(obj, "Ready").get("status") == "True" else None

    try:
        return cluster.wait_for(f"{name} Ready", ready, timeout=CONVERGE_S)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\noperator log:\n{operator.log_tail()}") from None


def test_sample_gets_its_children_and_becomes_ready(kube_cluster: Cluster, namespace: str,
                                                    operator: OperatorProcess) -> None:
    uid = _apply(kube_cluster, namespace, _sample(kube_cluster, "chat"))
    obj = _wait_ready(kube_cluster, namespace, "chat", operator)

    claim = _one_owned(kube_cluster, "persistentvolumeclaims", namespace, uid)
    assert claim and claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert claim["status"]["phase"] == "Bound"

    deployment = _one_owned(kube_cluster, "deployments.apps", namespace, uid)
    pod_spec = deployment["spec"]["template"]["spec"]
    engine = pod_spec["containers"][0]
    assert engine["resources"]["limits"][manifests.GPU_RESOURCE] == "1"
    assert engine["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert engine["livenessProbe"]["httpGet"]["path"] == "/health"
    assert any(v.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]
               for v in pod_spec["volumes"])

    service = _one_owned(kube_cluster, "services", namespace, uid)
    assert [p["name"] for p in service["spec"]["ports"]] == ["http"]

    hpa = _one_owned(kube_cluster, "horizontalpodautoscalers.autoscaling", namespace, uid)
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "pagoda_requests_waiting"

    selector = ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items())
    pods = kube_cluster.get("pods", namespace=namespace, selector=selector)["items"]
    assert pods and all(p["spec"]["nodeName"] in kube_cluster.gpu_nodes for p in pods)
    assert all(_condition(p, "Ready").get("status") == "True" for p in pods)

    assert obj["status"]["phase"] == "Ready"
    assert service["metadata"]["name"] in obj["status"]["endpoint"]


def test_too_few_gpus_leave_pods_pending_and_status_degraded(kube_cluster: Cluster, namespace: str,
                                                             operator: OperatorProcess) -> None:
    too_many = 2 * kube_cluster.gpus_per_node  # a power of two no simulated node has
    _apply(kube_cluster, namespace, _sample(kube_cluster, "huge", tensor_parallel_size=too_many))

    def degraded() -> dict[str, Any] | None:
        cond = _condition(kube_cluster.get(samples.PLURAL, "huge", namespace), "Degraded")
        return cond if cond.get("status") == "True" else None

    cond = kube_cluster.wait_for("Degraded", degraded, timeout=CONVERGE_S)
    assert f"Insufficient {manifests.GPU_RESOURCE}" in cond["message"]
    assert kube_cluster.get(samples.PLURAL, "huge", namespace)["status"]["phase"] == "Degraded"
    pods = kube_cluster.get("pods", namespace=namespace)["items"]
    assert pods and all(p["status"]["phase"] == "Pending" for p in pods)


def test_spec_change_rolls_the_deployment(kube_cluster: Cluster, namespace: str,
                                          operator: OperatorProcess) -> None:
    uid = _apply(kube_cluster, namespace, _sample(kube_cluster, "roll"))
    _wait_ready(kube_cluster, namespace, "roll", operator)
    before = _one_owned(kube_cluster, "deployments.apps", namespace, uid)

    _apply(kube_cluster, namespace, _sample(kube_cluster, "roll", max_model_len=4096))
    _wait_ready(kube_cluster, namespace, "roll", operator)
    after = _one_owned(kube_cluster, "deployments.apps", namespace, uid)
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    assert "4096" in str(after["spec"]["template"]["spec"]["containers"][0])
    kube_cluster.kubectl("rollout", "status", f"deployment/{after['metadata']['name']}", "-n", namespace,
                         "--timeout=60s")


@pytest.mark.parametrize("kind", ["services", "deployments.apps"])
def test_deleted_child_is_restored(kube_cluster: Cluster, namespace: str, operator: OperatorProcess,
                                   kind: str) -> None:
    uid = _apply(kube_cluster, namespace, _sample(kube_cluster, "heal"))
    _wait_ready(kube_cluster, namespace, "heal", operator)
    child = _one_owned(kube_cluster, kind, namespace, uid)
    kube_cluster.kubectl("delete", kind, child["metadata"]["name"], "-n", namespace)

    def restored() -> dict[str, Any] | None:
        again = _one_owned(kube_cluster, kind, namespace, uid)
        return again if again and again["metadata"]["uid"] != child["metadata"]["uid"] else None

    kube_cluster.wait_for(f"{kind} restored", restored, timeout=CONVERGE_S)
    _wait_ready(kube_cluster, namespace, "heal", operator)


def test_deleting_the_resource_collects_its_children(kube_cluster: Cluster, namespace: str,
                                                     operator: OperatorProcess) -> None:
    uid = _apply(kube_cluster, namespace, _sample(kube_cluster, "gone"))
    _wait_ready(kube_cluster, namespace, "gone", operator)
    kube_cluster.kubectl("delete", samples.PLURAL, "gone", "-n", namespace, "--timeout=60s")
    kinds = ("deployments.apps", "services", "horizontalpodautoscalers.autoscaling")
    kube_cluster.wait_for("children collected", lambda: not any(
        _owned(kube_cluster, kind, namespace, uid) for kind in kinds), timeout=CONVERGE_S)


@pytest.mark.parametrize("case,manifest,expected", samples.BAD_MANIFESTS, ids=[c[0] for c in samples.BAD_MANIFESTS])
def test_invalid_manifest_is_refused_with_its_message(kube_cluster: Cluster, namespace: str, case: str,
                                                      manifest: dict[str, Any], expected: str) -> None:
    with pytest.raises(KubectlError) as refused:
        kube_cluster.apply(manifest, namespace=namespace)
    assert expected in refused.value.stderr, refused.value.stderr
    assert kube_cluster.get(samples.PLURAL, manifest["metadata"]["name"], namespace) is None


def test_operator_killed_mid_reconcile_converges_after_restart(kube_cluster: Cluster, namespace: str,
                                                               operator: OperatorProcess) -> None:
    uid = _apply(kube_cluster, namespace, _sample(kube_cluster, "crash"))
    kube_cluster.wait_for("the first child", lambda: any(
        _owned(kube_cluster, kind, namespace, uid) for kind in CHILD_KINDS), timeout=CONVERGE_S, interval=0.05)
    operator.kill()
    try:
        assert not operator.alive()
    finally:
        operator.start()
    _wait_ready(kube_cluster, namespace, "crash", operator)
    for kind in CHILD_KINDS:
        assert _one_owned(kube_cluster, kind, namespace, uid), f"{kind} missing after restart"
