"""Which events of a child reconcile its owner.

Controllers keep rewriting the status of the operator's children: the
Deployment's rollout counters and condition timestamps, the
PodDisruptionBudget's budget, the HorizontalPodAutoscaler's current metrics
at every sync. Reconciling the owner on each of those costs a dozen API calls
and changes nothing. An event matters only when it changes what a reconcile
repairs (the child's spec, labels and annotations), what it reads to compute
the owner's status (`STATUS_READ`, see `status.py`), or whether the child
exists. The periodic resync still reconciles everything, whatever was skipped.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

#: Status fields of each kind that the owner's status is computed from;
#: the status of other kinds (Service, PDB, HPA) is never read.
STATUS_READ: dict[str, tuple[str, ...]] = {
    "Deployment": ("replicas", "readyReplicas", "availableReplicas", "updatedReplicas", "observedGeneration",
                   "conditions"),
    "LeaderWorkerSet": ("replicas", "readyReplicas", "updatedReplicas", "conditions"),
    "Pod": ("phase", "conditions", "containerStatuses", "initContainerStatuses"),
    "PersistentVolumeClaim": ("phase",),
}
#: Annotation prefixes that controllers write onto objects (PV binding, the
#: Deployment's revision): theirs, not drift of ours.
_CONTROLLER_ANNOTATIONS = ("kubernetes.io/", "pv.kubernetes.io/", "volume.kubernetes.io/",
                           "deployment.kubernetes.io/", "volume.beta.kubernetes.io/")


def _without_timestamps(value: Any) -> Any:
    """`value` without the keys that only date a fact (lastUpdateTime,
    lastTransitionTime, startedAt, ...): a condition re-stamped is the same condition."""
    if isinstance(value, dict):
        return {k: _without_timestamps(v) for k, v in value.items() if not k.endswith(("Time", "At", "Timestamp"))}
    if isinstance(value, list):
        return [_without_timestamps(v) for v in value]
    return value


def fingerprint(body: dict[str, Any]) -> str:
    """A digest of what a reconcile of the owner depends on in this child."""
    meta = body.get("metadata", {})
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if not k.startswith(_CONTROLLER_ANNOTATIONS)}
    status = body.get("status") or {}
    read = {key: _without_timestamps(status.get(key)) for key in STATUS_READ.get(body.get("kind", ""), ())}
    relevant = [meta.get("labels"), annotations, meta.get("ownerReferences"), body.get("spec"), read]
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


class ChildEventFilter:
    """Remembers each child's last fingerprint (by uid) to tell events that
    matter from status churn; safe to call from kopf's handler threads."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._seen: dict[str, str] = {}

    def matters(self, event_type: str, body: dict[str, Any]) -> bool:
        """Whether this event of a child should reconcile its owner: its
        deletion, its first sighting, or a change of its fingerprint."""
        uid = body.get("metadata", {}).get("uid", "")
        with self._guard:
            if event_type == "DELETED":
                self._seen.pop(uid, None)
                return True
            digest = fingerprint(body)
            if self._seen.get(uid) == digest:
                return False
            self._seen[uid] = digest
            return True
