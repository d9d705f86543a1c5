"""Status from observations: conditions, phase, transition times, real reasons."""

from __future__ import annotations

from typing import Any

from pagoda.operator import status
from pagoda.operator.status import Observed, Problem
from pagoda.operator.v1alpha1 import LLMDeployment

NOW, LATER = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def resource(spec: dict[str, Any] | None = None) -> LLMDeployment:
    return LLMDeployment.from_body({"metadata": {"name": "chat", "namespace": "ml", "uid": "u", "generation": 2},
                                    "spec": {"model": {"source": "hf://acme/chat"}} | (spec or {})})


def deployment(replicas: int = 1, ready: int = 1, updated: int | None = None, generation: int = 1,
               conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"metadata": {"generation": generation}, "spec": {"replicas": replicas},
            "status": {"observedGeneration": generation, "replicas": replicas, "readyReplicas": ready,
                       "availableReplicas": ready, "updatedReplicas": replicas if updated is None else updated,
                       "conditions": conditions or []}}


def pod(name: str = "chat-1", phase: str = "Running", **status_fields: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"phase": phase, **status_fields}}


FETCHED = {"initContainerStatuses": [{"name": "fetch-model", "state": {"terminated": {"exitCode": 0}}}]}


def compute(observed: Observed, previous: dict[str, Any] | None = None, spec: dict[str, Any] | None = None,
            now: str = NOW) -> dict[str, Any]:
    return status.compute(resource(spec), observed, previous or {}, now=now, cluster_domain="cluster.local")


def conditions(result: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in result["conditions"]}


def test_nothing_yet_is_pending() -> None:
    result = compute(Observed())
    assert result["phase"] == "Pending"
    assert conditions(result)["Progressing"] == ("True", "Creating")
    assert result["endpoint"] == "http://chat.ml.svc.cluster.local/v1"
    assert result["ready"] == "0/1" and result["observedGeneration"] == 2


def test_all_replicas_available_is_ready() -> None:
    result = compute(Observed(deployment=deployment(), pods=[pod(**FETCHED)], claim={}))
    assert result["phase"] == "Ready"
    assert conditions(result) == {"Ready": ("True", "Available"), "ModelCached": ("True", "Fetched"),
                                  "Progressing": ("False", "Complete"), "Degraded": ("False", "AsExpected")}
    assert result["selector"] == "pagoda.dev/llmdeployment=chat,app.kubernetes.io/component=engine"


def test_download_in_progress() -> None:
    fetching = {"initContainerStatuses": [{"name": "fetch-model", "state": {"running": {}}}]}
    result = compute(Observed(deployment=deployment(ready=0), pods=[pod(phase="Pending", **fetching)]))
    assert conditions(result)["ModelCached"] == ("False", "Downloading")
    assert conditions(result)["Progressing"] == ("True", "DownloadingModel")
    assert result["phase"] == "Progressing"


def test_cached_model_stays_cached_on_a_claim() -> None:
    first = compute(Observed(deployment=deployment(), pods=[pod(**FETCHED)]))
    again = compute(Observed(deployment=deployment(ready=0), pods=[]), previous=first)
    assert conditions(again)["ModelCached"] == ("True", "Fetched")


def test_rollout_is_progressing_and_partially_available() -> None:
    result = compute(Observed(deployment=deployment(replicas=3, ready=1, updated=2), pods=[pod(**FETCHED)]),
                     spec={"replicas": 3})
    assert conditions(result)["Progressing"] == ("True", "RollingOut")
    assert conditions(result)["Ready"] == ("True", "PartiallyAvailable")
    assert result["phase"] == "Progressing" and result["ready"] == "1/3"


def test_unschedulable_for_lack_of_gpus_is_degraded_with_the_schedulers_words() -> None:
    message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    pending = pod(phase="Pending", conditions=[{"type": "PodScheduled", "status": "False",
                                                "reason": "Unschedulable", "message": message}])
    result = compute(Observed(deployment=deployment(ready=0), pods=[pending]))
    degraded = next(c for c in result["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in degraded["message"]
    assert result["phase"] == "Degraded"


def test_image_pull_and_crash_loop_and_failed_fetch() -> None:
    def waiting(key: str, name: str, reason: str) -> dict[str, Any]:
        return pod(**{key: [{"name": name, "state": {"waiting": {"reason": reason, "message": "boom"}}}]})

    for key, name, reason, expected in [
        ("containerStatuses", "engine", "ImagePullBackOff", "ImagePullBackOff"),
        ("containerStatuses", "engine", "CrashLoopBackOff", "CrashLoopBackOff"),
        ("initContainerStatuses", "fetch-model", "CrashLoopBackOff", "ModelFetchFailed"),
        ("initContainerStatuses", "fetch-adapter-1", "CrashLoopBackOff", "AdapterFetchFailed"),
    ]:
        result = compute(Observed(deployment=deployment(ready=0), pods=[waiting(key, name, reason)]))
        assert conditions(result)["Degraded"] == ("True", expected)


def test_warning_event_explains_a_pending_pod() -> None:
    def event(reason: str, message: str) -> dict[str, Any]:
        return {"involvedObject": {"name": "chat-1"}, "reason": reason, "message": message}

    def degraded(*events: dict[str, Any]) -> tuple[str, str]:
        return conditions(compute(Observed(deployment=deployment(ready=0), pods=[pod(phase="Pending")],
                                           events=list(events))))["Degraded"]

    assert degraded(event("FailedMount", "volume not found")) == ("True", "FailedMount")
    assert degraded(event("FailedScheduling", "3 Insufficient nvidia.com/gpu"),
                    event("FailedScheduling", "pod has unbound immediate PersistentVolumeClaims")) == \
        ("True", "Unschedulable")
    assert degraded(event("FailedScheduling", "pod has unbound immediate PersistentVolumeClaims"))[0] == "False"


def test_problems_found_by_the_operator_come_first() -> None:
    result = compute(Observed(deployment=deployment(), problems=[Problem("SecretNotFound", "no secret")]))
    assert conditions(result)["Degraded"] == ("True", "SecretNotFound") and result["phase"] == "Degraded"


def test_progress_deadline_is_degraded() -> None:
    stuck = deployment(ready=0, conditions=[{"type": "Progressing", "status": "False",
                                             "reason": "ProgressDeadlineExceeded", "message": "too slow"}])
    assert conditions(compute(Observed(deployment=stuck)))["Degraded"] == ("True", "ProgressDeadlineExceeded")


def test_desired_replicas_follow_the_hpa_under_autoscaling() -> None:
    spec = {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 5}}
    assert compute(Observed(), spec=spec)["desiredReplicas"] == 2
    assert compute(Observed(deployment=deployment(replicas=4, ready=4)), spec=spec)["desiredReplicas"] == 4


def test_scaled_to_zero() -> None:
    result = compute(Observed(deployment=deployment(replicas=0, ready=0)), spec={"replicas": 0})
    assert conditions(result)["Ready"] == ("False", "ScaledToZero")


def test_pvc_source_is_cached_when_the_claim_exists() -> None:
    spec = {"model": {"source": "pvc://weights/m"}}
    assert conditions(compute(Observed(claim={"metadata": {}}), spec=spec))["ModelCached"] == ("True", "ClaimPresent")
    assert conditions(compute(Observed(), spec=spec))["ModelCached"] == ("False", "ClaimNotFound")


def test_transition_times_change_only_with_the_status() -> None:
    first = compute(Observed(deployment=deployment(ready=0)))
    same = compute(Observed(deployment=deployment(ready=0)), previous=first, now=LATER)
    changed = compute(Observed(deployment=deployment(), pods=[pod(**FETCHED)]), previous=first, now=LATER)
    times = {c["type"]: c["lastTransitionTime"] for c in same["conditions"]}
    assert set(times.values()) == {NOW}
    ready = next(c for c in changed["conditions"] if c["type"] == "Ready")
    assert ready["lastTransitionTime"] == LATER


def test_a_claim_being_bound_is_progress_not_a_fault() -> None:
    message = "0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims. not found"
    pending = pod(phase="Pending", conditions=[{"type": "PodScheduled", "status": "False",
                                                "reason": "Unschedulable", "message": message}])
    result = compute(Observed(deployment=deployment(ready=0), pods=[pending], claim={"status": {"phase": "Pending"}}))
    assert conditions(result)["Degraded"] == ("False", "AsExpected")
    assert conditions(result)["Progressing"] == ("True", "WaitingForClaim")
