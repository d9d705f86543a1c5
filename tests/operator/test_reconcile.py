"""One reconcile against an in-memory API: what it applies, reports and retries."""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

import pytest

from pagoda.operator import reconcile as rec
from pagoda.operator.config import OperatorConfig
from pagoda.operator.handlers import Serializer
from pagoda.operator.kube import FIELD_MANAGER, ApiError


class FakeKube:
    """Stores applied objects; bumps resourceVersion/generation on change and
    records which manager applied `.spec.replicas` (enough for the handover)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.applies: list[tuple[str, str, dict[str, Any]]] = []
        self.status_patches: list[dict[str, Any]] = []
        self.refuse: set[str] = set()
        #: Kinds whose CRD the cluster lacks.
        self.unserved: set[str] = set()
        self.version = 0

    def serves(self, api_version: str, kind: str) -> bool:
        return kind not in self.unserved

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj else None

    def apply(self, obj: dict[str, Any], *, field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
        kind, meta = obj["kind"], obj["metadata"]
        if kind in self.refuse:
            raise ApiError(422, "Invalid", f"{kind} is invalid")
        self.applies.append((kind, field_manager, copy.deepcopy(obj)))
        key = (kind, meta["namespace"], meta["name"])
        current = self.objects.get(key)
        merged = copy.deepcopy(current) if current else {"metadata": {"generation": 0, "resourceVersion": "0"}}
        spec = dict(merged.get("spec", {}))
        if field_manager == FIELD_MANAGER:
            keep = {"replicas": spec["replicas"]} if "replicas" in spec and "replicas" not in obj.get("spec", {}) \
                and merged["metadata"].get("replicasOwner") != FIELD_MANAGER else {}
            spec = {**copy.deepcopy(obj.get("spec", {})), **keep}
            merged.update({k: copy.deepcopy(v) for k, v in obj.items() if k not in ("spec", "metadata")})
        else:
            spec.update(obj["spec"])
        if "replicas" in obj.get("spec", {}):
            merged["metadata"]["replicasOwner"] = field_manager
        elif field_manager == FIELD_MANAGER and merged["metadata"].get("replicasOwner") == FIELD_MANAGER:
            spec.pop("replicas", None)
            merged["metadata"].pop("replicasOwner")
        if spec != merged.get("spec") or current is None:
            self.version += 1
            merged["metadata"]["generation"] += 1
            merged["metadata"]["resourceVersion"] = str(self.version)
        merged["spec"] = spec
        merged["metadata"].update({k: v for k, v in meta.items()})
        merged["metadata"]["managedFields"] = [
            {"manager": merged["metadata"].get("replicasOwner"), "operation": "Apply",
             "fieldsV1": {"f:spec": {"f:replicas": {}}}}]
        self.objects[key] = merged
        return copy.deepcopy(merged)

    def list(self, api_version: str, kind: str, namespace: str, **_: Any) -> list[dict[str, Any]]:
        return []

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.status_patches.append(status)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.objects.pop((kind, namespace, name), None)


def body(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": "pagoda.dev/v1alpha1", "kind": "LLMDeployment",
            "metadata": {"name": "chat", "namespace": "ml", "uid": "u", "generation": 1},
            "spec": {"model": {"source": "hf://acme/chat"}} | (spec or {}), "status": status or {}}


def run(kube: FakeKube, spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None) -> rec.Outcome:
    return rec.reconcile(kube, body(spec, status), OperatorConfig(), service_monitor=False)  # type: ignore[arg-type]


AUTO = {"autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 4}}
MULTI_NODE = {"engine": {"tensorParallelSize": 4, "nnodes": 2}, "modelCache": {"accessModes": ["ReadWriteMany"]}}
OWNED = {"pagoda.dev/llmdeployment": "chat"}


def test_first_reconcile_creates_children_and_writes_status() -> None:
    kube = FakeKube()
    outcome = run(kube)
    assert [a for a in outcome.actions] == [("Created", f"{k} {n}") for k, n in [
        ("PersistentVolumeClaim", "chat-model-cache"), ("Deployment", "chat"), ("Service", "chat"),
        ("PodDisruptionBudget", "chat")]]
    assert not outcome.problems
    assert kube.status_patches == [outcome.status]


def test_converged_reconcile_changes_nothing() -> None:
    kube = FakeKube()
    first = run(kube)
    again = run(kube, status=first.status)
    assert again.actions == [] and len(kube.status_patches) == 1


def test_deleted_child_is_restored_and_changed_spec_updates() -> None:
    kube = FakeKube()
    first = run(kube)
    kube.delete("v1", "Service", "ml", "chat")
    outcome = run(kube, {"engine": {"maxModelLen": 512}}, status=first.status)
    assert ("Restored", "Service chat") in outcome.actions
    assert ("Updated", "Deployment chat") in outcome.actions


def test_enabling_autoscaling_hands_replicas_over_without_resetting_them() -> None:
    kube = FakeKube()
    run(kube, {"replicas": 3})
    outcome = run(kube, {"replicas": 3} | AUTO)
    handover = [(k, m, o) for k, m, o in kube.applies if m == rec.HANDOVER_MANAGER]
    assert len(handover) == 1 and handover[0][2]["spec"] == {"replicas": 3}
    assert kube.objects[("Deployment", "ml", "chat")]["spec"]["replicas"] == 3
    assert ("Created", "HorizontalPodAutoscaler chat") in outcome.actions
    run(kube, {"replicas": 3} | AUTO)  # no second handover once the operator no longer owns replicas
    assert len([a for a in kube.applies if a[1] == rec.HANDOVER_MANAGER]) == 1


def test_disabling_autoscaling_removes_the_hpa() -> None:
    kube = FakeKube()
    run(kube, AUTO)
    kube.objects[("HorizontalPodAutoscaler", "ml", "chat")]["metadata"]["labels"] = {"pagoda.dev/llmdeployment": "chat"}
    outcome = run(kube)
    assert ("Deleted", "HorizontalPodAutoscaler chat") in outcome.actions
    assert ("HorizontalPodAutoscaler", "ml", "chat") not in kube.objects


def test_missing_secret_and_refused_child_are_problems_not_crashes() -> None:
    kube = FakeKube()
    kube.refuse.add("PodDisruptionBudget")
    outcome = run(kube, {"apiKeySecretRef": {"name": "api", "key": "k"}})
    assert [p.reason for p in outcome.problems] == ["ApplyFailed", "SecretNotFound"]
    assert ("Deployment", "ml", "chat") in kube.objects  # the rest is still applied
    assert outcome.status["phase"] == "Degraded"
    kube.objects[("Secret", "ml", "api")] = {"metadata": {}, "data": {"other": ""}}
    assert run(kube, {"apiKeySecretRef": {"name": "api", "key": "k"}}).problems[1].reason == "SecretKeyNotFound"


def test_absent_claim_of_a_pvc_source_is_a_problem() -> None:
    outcome = run(FakeKube(), {"model": {"source": "pvc://weights/m"}})
    assert [p.reason for p in outcome.problems] == ["ClaimNotFound"]


def test_absent_claim_of_an_adapter_is_a_problem() -> None:
    kube = FakeKube()
    spec = {"adapters": [{"name": "sql", "source": "pvc://loras/sql"}]}
    outcome = run(kube, spec)
    assert [(p.reason, "'loras'" in p.message) for p in outcome.problems] == [("ClaimNotFound", True)]
    kube.objects[("PersistentVolumeClaim", "ml", "loras")] = {"metadata": {"name": "loras"}}
    assert run(kube, spec).problems == []


def test_nnodes_switches_between_a_deployment_and_a_leaderworkerset() -> None:
    kube = FakeKube()
    first = run(kube, AUTO)
    outcome = run(kube, MULTI_NODE | AUTO, status=first.status)
    assert ("Deleted", "Deployment chat") in outcome.actions
    assert ("LeaderWorkerSet", "ml", "chat") in kube.objects and ("Deployment", "ml", "chat") not in kube.objects
    assert not outcome.problems and outcome.status["phase"] == "Progressing"
    back = run(kube, AUTO, status=outcome.status)
    assert ("Deleted", "LeaderWorkerSet chat") in back.actions
    assert ("Deployment", "ml", "chat") in kube.objects and ("LeaderWorkerSet", "ml", "chat") not in kube.objects


def test_replicas_pass_from_a_leaderworkerset_to_the_hpa() -> None:
    kube = FakeKube()
    run(kube, MULTI_NODE | {"replicas": 3})
    run(kube, MULTI_NODE | {"replicas": 3} | AUTO)
    handover = [o for _, m, o in kube.applies if m == rec.HANDOVER_MANAGER]
    assert [(o["kind"], o["spec"]) for o in handover] == [("LeaderWorkerSet", {"replicas": 3})]
    assert kube.objects[("LeaderWorkerSet", "ml", "chat")]["spec"]["replicas"] == 3


def test_status_counts_leaderworkerset_groups_as_replicas() -> None:
    kube = FakeKube()
    first = run(kube, MULTI_NODE | {"replicas": 2})
    kube.objects[("LeaderWorkerSet", "ml", "chat")]["status"] = {"replicas": 2, "readyReplicas": 2,
                                                                 "updatedReplicas": 2}
    status = run(kube, MULTI_NODE | {"replicas": 2}, status=first.status).status
    assert (status["replicas"], status["readyReplicas"], status["ready"]) == (2, 2, "2/2")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Available")
    assert status["selector"].endswith(",leaderworkerset.sigs.k8s.io/worker-index=0")


def test_a_cluster_without_leaderworkerset_is_degraded_and_keeps_the_deployment() -> None:
    """The running replicas keep serving until their new kind can hold them."""
    kube = FakeKube()
    kube.unserved.add("LeaderWorkerSet")
    first = run(kube)
    outcome = run(kube, MULTI_NODE, status=first.status)
    assert [p.reason for p in outcome.problems] == ["LeaderWorkerSetNotInstalled"]
    assert "sigs.k8s.io/lws" in outcome.problems[0].message
    assert ("Deployment", "ml", "chat") in kube.objects and ("LeaderWorkerSet", "ml", "chat") not in kube.objects
    degraded = next(c for c in outcome.status["conditions"] if c["type"] == "Degraded")
    assert (outcome.status["phase"], degraded["reason"]) == ("Degraded", "LeaderWorkerSetNotInstalled")


def test_serializer_folds_child_events_into_one_rerun() -> None:
    serializer, calls, gate = Serializer(), [], threading.Event()

    def slow() -> int:
        calls.append(1)
        gate.wait(5)
        return len(calls)

    first = threading.Thread(target=serializer.run, args=("k", slow))
    first.start()
    while not calls:
        time.sleep(0.01)
    assert [serializer.run("k", slow, coalesce=True) for _ in range(5)] == [None] * 5
    gate.set()
    first.join()
    assert len(calls) == 2  # the running one went once more for all five
    assert serializer.run("k", lambda: 7, coalesce=True) == 7


def test_serializer_lets_errors_through_and_stays_usable() -> None:
    serializer = Serializer()
    with pytest.raises(ZeroDivisionError):
        serializer.run("k", lambda: 1 / 0)
    assert serializer.run("k", lambda: 1) == 1
