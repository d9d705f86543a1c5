"""The operator against a real API server, scheduler and controllers."""

from __future__ import annotations

import json
import time
from typing import Any

from e2e.cluster.client import Cluster

from .stack import Operator, llm_deployment

PLURAL = "llmdeployments.pagoda.dev"
CONVERGE_S = 60
CHILDREN = ("persistentvolumeclaim/{}-model-cache", "deployment.apps/{}", "service/{}",
            "poddisruptionbudget.policy/{}")


def status_of(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return (cluster.get(PLURAL, name, namespace) or {}).get("status", {})


def condition(cluster: Cluster, namespace: str, name: str, kind: str) -> dict[str, Any]:
    return next((c for c in status_of(cluster, namespace, name).get("conditions", []) if c["type"] == kind), {})


def wait_ready(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        obj = cluster.get(PLURAL, name, namespace) or {}
        status = obj.get("status", {})
        current = status.get("observedGeneration") == obj.get("metadata", {}).get("generation")
        return obj if current and status.get("phase") == "Ready" else None

    return cluster.wait_for(f"{name} Ready", ready, timeout=CONVERGE_S)


def children_present(cluster: Cluster, namespace: str, name: str) -> bool:
    return all(cluster.get(*child.format(name).split("/"), namespace=namespace) for child in CHILDREN)


def deployment(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return cluster.get("deployment.apps", name, namespace)


def replicas(cluster: Cluster, namespace: str, name: str) -> int | None:
    """The Deployment's spec.replicas; None until the operator has created it."""
    found = deployment(cluster, namespace, name)
    return found["spec"]["replicas"] if found else None


def events(cluster: Cluster, namespace: str, name: str) -> list[str]:
    items = cluster.get("events", namespace=namespace)["items"]
    return [e["reason"] for e in items if e["involvedObject"].get("name") == name
            and e["involvedObject"].get("kind") == "LLMDeployment"]


def test_create_yields_owned_children_and_ready_status(cluster: Cluster, namespace: str) -> None:
    cluster.apply(llm_deployment("chat"), namespace=namespace)
    obj = wait_ready(cluster, namespace, "chat")
    uid = obj["metadata"]["uid"]
    for child in CHILDREN:
        found = cluster.get(*child.format("chat").split("/"), namespace=namespace)
        assert found["metadata"]["ownerReferences"][0]["uid"] == uid, child
        assert found["metadata"]["labels"]["pagoda.dev/llmdeployment"] == "chat"
    pods = cluster.get("pods", namespace=namespace, selector="pagoda.dev/llmdeployment=chat")["items"]
    assert pods and all(p["spec"]["nodeName"] in cluster.gpu_nodes for p in pods)
    status = obj["status"]
    assert status["endpoint"] == f"http://chat.{namespace}.svc.cluster.local/v1"
    assert status["ready"] == "1/1" and status["model"] == "Qwen/Qwen2.5-0.5B-Instruct"
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {"Ready": "True", "ModelCached": "True", "Progressing": "False", "Degraded": "False"}
    table = cluster.kubectl("get", "llmd", "chat", "-n", namespace).stdout
    assert "Ready" in table and "1/1" in table and "hf://Qwen/Qwen2.5-0.5B-Instruct" in table
    assert "Created" in events(cluster, namespace, "chat")


def test_update_rolls_the_deployment(cluster: Cluster, namespace: str) -> None:
    cluster.apply(llm_deployment("roll"), namespace=namespace)
    wait_ready(cluster, namespace, "roll")
    before = deployment(cluster, namespace, "roll")["metadata"]["generation"]
    cluster.apply(llm_deployment("roll", engine={"maxModelLen": 4096}), namespace=namespace)
    cluster.wait_for("new args", lambda: "4096" in deployment(cluster, namespace, "roll")["spec"]["template"]
                     ["spec"]["containers"][0]["args"], timeout=CONVERGE_S)
    assert deployment(cluster, namespace, "roll")["metadata"]["generation"] > before
    obj = wait_ready(cluster, namespace, "roll")
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 2


def test_deleted_and_edited_children_are_restored(cluster: Cluster, namespace: str) -> None:
    cluster.apply(llm_deployment("heal"), namespace=namespace)
    wait_ready(cluster, namespace, "heal")
    service_uid = cluster.get("service", "heal", namespace)["metadata"]["uid"]
    cluster.kubectl("delete", "service", "heal", "-n", namespace)
    cluster.wait_for("service restored", lambda: (cluster.get("service", "heal", namespace) or {})
                     .get("metadata", {}).get("uid") not in (None, service_uid), timeout=CONVERGE_S)
    cluster.kubectl("patch", "service", "heal", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"selector": {"pagoda.dev/llmdeployment": "other"}}}))
    cluster.kubectl("patch", "deployment", "heal", "-n", namespace, "--type=json",
                    "-p", json.dumps([{"op": "replace", "path": "/spec/template/spec/containers/0/image",
                                       "value": "evil:latest"}]))
    cluster.wait_for("selector repaired", lambda: cluster.get("service", "heal", namespace)["spec"]["selector"]
                     ["pagoda.dev/llmdeployment"] == "heal", timeout=CONVERGE_S)
    cluster.wait_for("image repaired", lambda: deployment(cluster, namespace, "heal")["spec"]["template"]["spec"]
                     ["containers"][0]["image"] != "evil:latest", timeout=CONVERGE_S)
    assert "Restored" in events(cluster, namespace, "heal")


def test_deletion_garbage_collects_children_but_a_retained_cache(cluster: Cluster, namespace: str) -> None:
    cluster.apply(llm_deployment("gone"), llm_deployment("kept", modelCache={"size": "1Gi", "reclaimPolicy": "Retain"}),
                  namespace=namespace)
    cluster.wait_for("children", lambda: children_present(cluster, namespace, "gone")
                     and children_present(cluster, namespace, "kept"), timeout=CONVERGE_S)
    cluster.kubectl("delete", PLURAL, "gone", "kept", "-n", namespace)

    def collected() -> bool:
        remaining = [c for c in CHILDREN if cluster.get(*c.format("gone").split("/"), namespace=namespace)]
        remaining += [c for c in CHILDREN[1:] if cluster.get(*c.format("kept").split("/"), namespace=namespace)]
        return not remaining

    cluster.wait_for("garbage collection", collected, timeout=CONVERGE_S)
    assert cluster.get("persistentvolumeclaim", "kept-model-cache", namespace) is not None


def test_hpa_owns_replicas(cluster: Cluster, namespace: str) -> None:
    cluster.apply(llm_deployment("auto", replicas=2), namespace=namespace)
    cluster.wait_for("2 replicas", lambda: replicas(cluster, namespace, "auto") == 2,
                     timeout=CONVERGE_S)
    auto = {"enabled": True, "minReplicas": 1, "maxReplicas": 5, "targetQueueDepth": 3}
    cluster.apply(llm_deployment("auto", replicas=2, autoscaling=auto), namespace=namespace)
    hpa = cluster.wait_for("HPA", lambda: cluster.get("horizontalpodautoscaler.autoscaling", "auto", namespace),
                           timeout=CONVERGE_S)
    assert hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "3"
    # Handing replicas over did not reset them to the default of 1.
    assert deployment(cluster, namespace, "auto")["spec"]["replicas"] == 2
    # The HPA (here: its scale subresource call) decides; the operator no longer touches replicas.
    cluster.kubectl("scale", "deployment/auto", "-n", namespace, "--replicas=4")
    cluster.kubectl("annotate", PLURAL, "auto", "-n", namespace, "touch=1")  # forces a reconcile
    time.sleep(3)
    cluster.wait_for("resync", lambda: status_of(cluster, namespace, "auto").get("desiredReplicas") == 4,
                     timeout=CONVERGE_S)
    assert deployment(cluster, namespace, "auto")["spec"]["replicas"] == 4
    # Autoscaling off again: spec.replicas rules and the HPA goes.
    cluster.apply(llm_deployment("auto", replicas=2), namespace=namespace)
    cluster.wait_for("HPA removed", lambda: cluster.get("horizontalpodautoscaler.autoscaling", "auto", namespace)
                     is None, timeout=CONVERGE_S)
    cluster.wait_for("replicas back", lambda: replicas(cluster, namespace, "auto") == 2,
                     timeout=CONVERGE_S)


def test_too_few_gpus_is_degraded_with_the_schedulers_reason(cluster: Cluster, namespace: str) -> None:
    tp = 2 * cluster.gpus_per_node
    cluster.apply(llm_deployment("huge", engine={"tensorParallelSize": tp}), namespace=namespace)
    cond = cluster.wait_for("Degraded", lambda: (lambda c: c if c.get("status") == "True" else None)(
        condition(cluster, namespace, "huge", "Degraded")), timeout=CONVERGE_S)
    assert cond["reason"] == "Unschedulable" and "Insufficient nvidia.com/gpu" in cond["message"]
    assert status_of(cluster, namespace, "huge")["phase"] == "Degraded"


def test_missing_secret_is_degraded_until_it_appears(cluster: Cluster, namespace: str) -> None:
    cluster.apply(llm_deployment("locked", apiKeySecretRef={"name": "api", "key": "key"}), namespace=namespace)
    cond = cluster.wait_for("Degraded", lambda: (lambda c: c if c.get("status") == "True" else None)(
        condition(cluster, namespace, "locked", "Degraded")), timeout=CONVERGE_S)
    assert cond["reason"] == "SecretNotFound" and "'api'" in cond["message"]
    assert children_present(cluster, namespace, "locked")  # everything else is in place
    cluster.kubectl("create", "secret", "generic", "api", "-n", namespace, "--from-literal=key=s3cret")
    cluster.wait_for("recovered", lambda: condition(cluster, namespace, "locked", "Degraded").get("status") == "False",
                     timeout=CONVERGE_S)


def test_operator_killed_mid_reconcile_converges_after_restart(cluster: Cluster, namespace: str,
                                                               operator: Operator) -> None:
    names = [f"r{i}" for i in range(8)]
    cluster.apply(*(llm_deployment(n) for n in names), namespace=namespace)
    cluster.wait_for("first child", lambda: cluster.get("deployment.apps", namespace=namespace)["items"],
                     timeout=CONVERGE_S, interval=0.05)
    operator.kill()
    try:
        cluster.kubectl("delete", "service", "--all", "-n", namespace)
    finally:
        operator.start()
    for name in names:
        wait_ready(cluster, namespace, name)
        assert children_present(cluster, namespace, name)


def test_scale_to_zero_and_back(cluster: Cluster, namespace: str) -> None:
    """minReplicas 0: never requested, the model holds no replica; a request's
    stamp (what `pagoda gateway` writes) brings one back, and the HPA still
    scales from there; without a newer stamp it goes back to zero."""
    auto = {"enabled": True, "minReplicas": 0, "maxReplicas": 3, "scaleToZeroDelaySeconds": 30}
    cluster.apply(llm_deployment("lazy", autoscaling=auto), namespace=namespace)
    cluster.wait_for("scaled to zero", lambda: replicas(cluster, namespace, "lazy") == 0, timeout=CONVERGE_S)
    hpa = cluster.wait_for("HPA", lambda: cluster.get("horizontalpodautoscaler.autoscaling", "lazy", namespace),
                           timeout=CONVERGE_S)
    assert hpa["spec"]["minReplicas"] == 1
    cluster.wait_for("status", lambda: condition(cluster, namespace, "lazy", "Ready").get("reason") == "ScaledToZero",
                     timeout=CONVERGE_S)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    cluster.kubectl("annotate", PLURAL, "lazy", "-n", namespace, f"pagoda.dev/last-request-time={stamp}")
    cluster.wait_for("one replica", lambda: replicas(cluster, namespace, "lazy") == 1, timeout=CONVERGE_S)
    wait_ready(cluster, namespace, "lazy")
    # The HPA owns the count between one and maxReplicas (here: its scale call).
    cluster.kubectl("scale", "deployment/lazy", "-n", namespace, "--replicas=2")
    cluster.kubectl("annotate", PLURAL, "lazy", "-n", namespace, "touch=1")  # forces a reconcile
    time.sleep(3)
    assert replicas(cluster, namespace, "lazy") == 2
    # No newer stamp: zero again once the delay has passed (the operator resyncs every 10 s here).
    cluster.wait_for("scaled to zero again", lambda: replicas(cluster, namespace, "lazy") == 0, timeout=30 + 40)
    assert {"ScaledToZero", "ScaledFromZero"} <= set(events(cluster, namespace, "lazy"))
