"""What `.status` says, as a pure function of what the operator observed.

Status follows reality: it is recomputed on every reconcile from the
Deployment, the pods (and their Warning events) and the model claim, never
from what the operator last did. Degraded carries the real reason a person
needs — the scheduler's "Insufficient nvidia.com/gpu", an image pull error, a
crash loop, a missing Secret — in its message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .manifests.deployment import FETCH_CONTAINER
from .manifests.leaderworkerset import leader_labels
from .manifests.meta import endpoint, selector_labels
from .manifests.model import ADAPTER_FETCH_PREFIX, model_volume
from .v1alpha1 import LLMDeployment

#: Container waiting reasons that will not resolve by waiting.
STUCK_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CrashLoopBackOff",
                 "CreateContainerConfigError", "CreateContainerError", "RunContainerError")
#: The scheduler's words while the model cache claim is still being bound:
#: progress, not a fault (a claim that never binds shows in its events).
UNBOUND_CLAIM = "unbound immediate PersistentVolumeClaims"
#: Pod events that explain a pod stuck in Pending -> the Degraded reason.
STUCK_EVENTS = {"FailedScheduling": "Unschedulable", "FailedMount": "FailedMount",
                "FailedAttachVolume": "FailedAttachVolume", "FailedCreatePodSandBox": "FailedCreatePodSandBox"}


@dataclass(frozen=True)
class Problem:
    """Why the resource cannot work as specified; becomes the Degraded condition."""

    reason: str
    message: str


@dataclass
class Observed:
    """The cluster state one reconcile read."""

    #: The engine Deployment, or the LeaderWorkerSet seen as one (`leaderworkerset_as_deployment`).
    deployment: dict[str, Any] | None = None
    #: The claim holding the model (created or referenced), when there is one.
    claim: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)
    #: Warning events of the pods, newest last.
    events: list[dict[str, Any]] = field(default_factory=list)
    #: Problems found before looking at pods: missing Secrets or claims, refused applies.
    problems: list[Problem] = field(default_factory=list)


def _condition(kind: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message}


def _statuses(pod: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return pod.get("status", {}).get(key) or []


def _fetch_state(pods: list[dict[str, Any]]) -> str:
    """"done" when some pod fetched the model, "running" while one fetches, else ""."""
    states = [s.get("state", {}) for pod in pods for s in _statuses(pod, "initContainerStatuses")
              if s.get("name") == FETCH_CONTAINER]
    if any(st.get("terminated", {}).get("exitCode") == 0 for st in states):
        return "done"
    return "running" if any("running" in st for st in states) else ""


def pod_problem(pods: list[dict[str, Any]], events: list[dict[str, Any]]) -> Problem | None:
    """The first reason found that keeps a pod from serving."""
    for pod in pods:
        name = pod["metadata"]["name"]
        for cond in pod.get("status", {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("reason") == "Unschedulable" \
                    and UNBOUND_CLAIM not in cond.get("message", ""):
                return Problem("Unschedulable", f"pod {name}: {cond.get('message', 'unschedulable')}")
        for key in ("initContainerStatuses", "containerStatuses"):
            for cs in _statuses(pod, key):
                waiting = cs.get("state", {}).get("waiting") or {}
                if waiting.get("reason") in STUCK_REASONS:
                    reason = waiting["reason"]
                    if cs.get("name") == FETCH_CONTAINER and reason == "CrashLoopBackOff":
                        reason = "ModelFetchFailed"
                    elif cs.get("name", "").startswith(ADAPTER_FETCH_PREFIX) and reason == "CrashLoopBackOff":
                        reason = "AdapterFetchFailed"
                    return Problem(reason, f"pod {name}, container {cs.get('name')}: "
                                           f"{waiting.get('message') or waiting['reason']}")
    pending = {p["metadata"]["name"] for p in pods if p.get("status", {}).get("phase") == "Pending"}
    for event in reversed(events):
        involved = event.get("involvedObject", {}).get("name")
        message = event.get("message", "")
        if involved in pending and event.get("reason") in STUCK_EVENTS and UNBOUND_CLAIM not in message:
            return Problem(STUCK_EVENTS[event["reason"]], f"pod {involved}: {message}")
    return None


def leaderworkerset_as_deployment(lws: dict[str, Any]) -> dict[str, Any]:
    """A LeaderWorkerSet as the Deployment that status is computed from: its groups are the replicas.

    A group counts as available once ready (LWS reports no availableReplicas),
    and LWS reports no observedGeneration: its updatedReplicas, counted
    against the current template, say whether a rollout is done.
    """
    counts = lws.get("status") or {}
    return {"metadata": lws["metadata"], "spec": lws.get("spec", {}), "status": {
        "replicas": counts.get("replicas", 0), "readyReplicas": counts.get("readyReplicas", 0),
        "availableReplicas": counts.get("readyReplicas", 0), "updatedReplicas": counts.get("updatedReplicas", 0),
        "observedGeneration": lws["metadata"].get("generation", 0)}}


def _desired_replicas(resource: LLMDeployment, deployment: dict[str, Any] | None) -> int:
    """Under autoscaling the HPA decides, through the Deployment's `.spec.replicas`."""
    if resource.spec.autoscaling.enabled:
        if deployment is None:
            return resource.spec.autoscaling.min_replicas or 1
        return deployment.get("spec", {}).get("replicas", 1)
    return resource.spec.replicas


def _deployment_problem(deployment: dict[str, Any] | None) -> Problem | None:
    for cond in (deployment or {}).get("status", {}).get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return Problem("ProgressDeadlineExceeded", cond.get("message", ""))
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            return Problem(cond.get("reason", "ReplicaFailure"), cond.get("message", ""))
    return None


def compute(resource: LLMDeployment, observed: Observed, previous: dict[str, Any], *,
            now: str, cluster_domain: str) -> dict[str, Any]:
    """The full `.status` for `resource`, given the previous one (for transition times)."""
    dep = observed.deployment
    dep_status = (dep or {}).get("status", {})
    desired = _desired_replicas(resource, dep)
    available = dep_status.get("availableReplicas", 0)
    ready = dep_status.get("readyReplicas", 0)
    volume = model_volume(resource)

    if not volume.fetch:
        cached = _condition("ModelCached", observed.claim is not None, "ClaimPresent" if observed.claim else
                            "ClaimNotFound", f"model read in place from claim {volume.claim}")
    else:
        fetch = _fetch_state(observed.pods)
        was_cached = any(c["type"] == "ModelCached" and c["status"] == "True" for c in previous.get("conditions", []))
        if fetch == "done" or (was_cached and volume.claim):
            cached = _condition("ModelCached", True, "Fetched", f"{resource.spec.model.source} is in {volume.model_dir}")
        elif fetch == "running":
            cached = _condition("ModelCached", False, "Downloading", f"fetching {resource.spec.model.source}")
        else:
            cached = _condition("ModelCached", False, "Pending", "no pod has fetched the model yet")

    problem = (observed.problems[0] if observed.problems else None) or _deployment_problem(dep) \
        or pod_problem(observed.pods, observed.events)
    degraded = _condition("Degraded", problem is not None, problem.reason if problem else "AsExpected",
                          problem.message if problem else "")

    generation_seen = dep is not None and dep_status.get("observedGeneration", 0) >= dep["metadata"].get("generation", 0)
    updated = dep_status.get("updatedReplicas", 0)
    if dep is None:
        progressing = _condition("Progressing", True, "Creating", "creating the engine Deployment")
    elif observed.claim is not None and observed.claim.get("status", {}).get("phase") == "Pending":
        progressing = _condition("Progressing", True, "WaitingForClaim",
                                 f"PersistentVolumeClaim {volume.claim} is not bound yet")
    elif cached["reason"] == "Downloading":
        progressing = _condition("Progressing", True, "DownloadingModel", cached["message"])
    elif not generation_seen or updated < desired or ready < desired or dep_status.get("replicas", 0) > desired:
        progressing = _condition("Progressing", True, "RollingOut",
                                 f"{updated}/{desired} replicas updated, {ready} ready")
    else:
        progressing = _condition("Progressing", False, "Complete", f"{desired} replicas up to date")

    if available >= 1:
        ready_cond = _condition("Ready", True, "Available" if available >= desired else "PartiallyAvailable",
                                f"{available}/{desired} replicas available")
    else:
        ready_cond = _condition("Ready", False, "ScaledToZero" if desired == 0 else "NoReplicasAvailable",
                                f"0/{desired} replicas available")

    if problem:
        phase = "Degraded"
    elif dep is None:
        phase = "Pending"
    elif ready_cond["status"] == "True" and progressing["status"] == "False":
        phase = "Ready"
    else:
        phase = "Progressing"

    before = {c["type"]: c for c in previous.get("conditions", [])}
    conditions = []
    for cond in (ready_cond, cached, progressing, degraded):
        old = before.get(cond["type"])
        unchanged = old is not None and old.get("status") == cond["status"]
        cond["lastTransitionTime"] = old["lastTransitionTime"] if unchanged else now
        cond["observedGeneration"] = resource.generation
        conditions.append(cond)

    return {
        "phase": phase,
        "conditions": conditions,
        "replicas": dep_status.get("replicas", 0),
        "readyReplicas": ready,
        "desiredReplicas": desired,
        "ready": f"{ready}/{desired}",
        "endpoint": endpoint(resource, cluster_domain),
        "model": resource.spec.served_name,
        "selector": ",".join(f"{k}={v}" for k, v in (selector_labels(resource) | leader_labels(resource)).items()),
        "observedGeneration": resource.generation,
    }
