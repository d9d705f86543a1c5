"""Which child events reconcile the owner: drift, deletion and the status the
owner reads do; controllers' status churn does not."""

from __future__ import annotations

import copy
from typing import Any

from pagoda.operator.child_events import ChildEventFilter


def _child(kind: str, **status: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": kind,
            "metadata": {"name": "chat", "namespace": "ns", "uid": f"uid-{kind}", "resourceVersion": "1",
                         "generation": 1, "labels": {"pagoda.dev/llmdeployment": "chat"}},
            "spec": {"replicas": 1}, "status": status}


def _seen(kind: str, **status: Any) -> tuple[ChildEventFilter, dict[str, Any]]:
    """A filter that has already seen the child once (its first sighting matters)."""
    events, body = ChildEventFilter(), _child(kind, **status)
    assert events.matters("ADDED", body)
    return events, body


def _changed(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `body` with `path` (dotted) set to `value` and a new resourceVersion, as a watch event brings."""
    new = copy.deepcopy(body)
    *parents, leaf = path.split(".")
    node = new
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    new["metadata"]["resourceVersion"] = str(int(body["metadata"]["resourceVersion"]) + 1)
    return new


def test_controllers_status_churn_does_not_reconcile() -> None:
    condition = {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                 "lastUpdateTime": "2026-11-23T10:00:00Z", "lastTransitionTime": "2026-11-23T10:00:00Z"}
    events, deployment = _seen("Deployment", replicas=1, readyReplicas=1, conditions=[condition])
    restamped = _changed(deployment, "status.conditions", [{**condition, "lastUpdateTime": "2026-11-23T10:05:00Z"}])
    assert not events.matters("MODIFIED", restamped)
    assert not events.matters("MODIFIED", _changed(restamped, "status.collisionCount", 1))  # not read by status.py

    events, pdb = _seen("PodDisruptionBudget", currentHealthy=1)
    assert not events.matters("MODIFIED", _changed(pdb, "status.currentHealthy", 0))
    events, hpa = _seen("HorizontalPodAutoscaler", currentMetrics=[{"pods": {"current": {"averageValue": "2"}}}])
    assert not events.matters("MODIFIED", _changed(hpa, "status.currentMetrics", [{"pods": {"current": {"averageValue": "9"}}}]))
    events, claim = _seen("PersistentVolumeClaim", phase="Bound")
    bound = _changed(claim, "metadata.annotations", {"pv.kubernetes.io/bind-completed": "yes"})
    assert not events.matters("MODIFIED", bound)


def test_status_the_owner_reads_reconciles() -> None:
    events, deployment = _seen("Deployment", replicas=1, readyReplicas=0)
    assert events.matters("MODIFIED", _changed(deployment, "status.readyReplicas", 1))
    events, claim = _seen("PersistentVolumeClaim", phase="Pending")
    assert events.matters("MODIFIED", _changed(claim, "status.phase", "Bound"))
    events, pod = _seen("Pod", phase="Pending")
    waiting = {"name": "engine", "ready": False, "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
    assert events.matters("MODIFIED", _changed(pod, "status.containerStatuses", [waiting]))


def test_drift_of_what_the_operator_applies_reconciles() -> None:
    for path, value in (("spec.replicas", 3), ("metadata.labels", {}), ("metadata.annotations", {"team": "x"}),
                        ("metadata.ownerReferences", [])):
        events, pdb = _seen("PodDisruptionBudget")
        assert events.matters("MODIFIED", _changed(pdb, path, value)), path


def test_deletion_always_reconciles_and_a_recreated_child_is_new() -> None:
    events, service = _seen("Service")
    assert not events.matters("MODIFIED", _changed(service, "status.loadBalancer", {}))
    assert events.matters("DELETED", service)
    assert events.matters("ADDED", service)  # forgotten at deletion: seen afresh
    assert not events.matters("MODIFIED", service)
