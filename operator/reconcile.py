"""One reconcile of one `LLMDeployment`: apply its children, then report status.

Idempotent and level-based: it reads the resource and the cluster afresh and
converges them, whatever triggered it (creation, an edit, a child changed or
deleted by hand, a periodic resync, an operator restart).  It knows nothing
of kopf; `handlers.py` wires it to events and turns its outcome into
Kubernetes Events and retries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from . import manifests, status
from .config import OperatorConfig
from .kube import FIELD_MANAGER, ApiError, Kube
from .manifests import leaderworkerset, servicemonitor
from .manifests.meta import OWNER_LABEL, selector_labels
from .manifests.model import adapter_placement, model_volume
from . import scale_to_zero
from .status import Observed, Problem
from .v1alpha1 import API_VERSION, KIND, LLMDeployment

#: Field manager that holds `.spec.replicas` of a Deployment (or LeaderWorkerSet)
#: while it passes from the operator to the HPA (see `hand_replicas_to_hpa`).
HANDOVER_MANAGER = "pagoda-operator-hpa-handover"
#: The kinds that run the engine pods: a Deployment, or a LeaderWorkerSet when replicas span several machines.
WORKLOADS = (("apps/v1", "Deployment"), (leaderworkerset.API_VERSION, leaderworkerset.KIND))
#: Children that only exist under some specs, removed when no longer rendered.
OPTIONAL_KINDS = (("autoscaling/v2", "HorizontalPodAutoscaler"), (servicemonitor.API_VERSION, servicemonitor.KIND),
                  *WORKLOADS)


@dataclass
class Outcome:
    status: dict[str, Any]
    #: (reason, message) of each significant action, for Kubernetes Events.
    actions: list[tuple[str, str]] = field(default_factory=list)
    #: What keeps the resource from working; non-empty means retry later.
    problems: list[Problem] = field(default_factory=list)


def _owns_replicas(deployment: dict[str, Any], manager: str) -> bool:
    return any(entry.get("manager") == manager and entry.get("operation") == "Apply"
               and "f:replicas" in entry.get("fieldsV1", {}).get("f:spec", {})
               for entry in deployment["metadata"].get("managedFields") or [])


def hand_replicas_to_hpa(kube: Kube, workload: dict[str, Any]) -> None:
    """Stops the operator owning `.spec.replicas` without resetting it.

    Dropping a field from an apply deletes it when no other manager owns it,
    which would reset the replica count to 1 before the HPA acts. So another
    manager first claims the current value; from then on the HPA's scale
    updates take it over and the operator's applies never mention it.
    """
    if not _owns_replicas(workload, FIELD_MANAGER):
        return
    meta = workload["metadata"]
    kube.apply({"apiVersion": workload["apiVersion"], "kind": workload["kind"],
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                "spec": {"replicas": workload["spec"].get("replicas", 1)}}, field_manager=HANDOVER_MANAGER)


def _changed(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether an apply changed the object: its generation where it has one
    (status updates racing the apply do not count), else its resourceVersion."""
    if "generation" in after["metadata"]:
        return before["metadata"].get("generation") != after["metadata"]["generation"]
    return before["metadata"]["resourceVersion"] != after["metadata"]["resourceVersion"]


def _apply_children(kube: Kube, resource: LLMDeployment, desired: list[dict[str, Any]],
                    seen_before: bool, outcome: Outcome) -> dict[tuple[str, str], dict[str, Any]]:
    applied = {}
    for obj in desired:
        kind, name = obj["kind"], obj["metadata"]["name"]
        current = kube.get(obj["apiVersion"], kind, resource.namespace, name)
        if (obj["apiVersion"], kind) in WORKLOADS and current is not None and resource.spec.autoscaling.enabled:
            hand_replicas_to_hpa(kube, current)
        try:
            result = kube.apply(obj)
        except ApiError as err:
            outcome.problems.append(Problem("ApplyFailed", f"{kind} {name} refused: {err.message}"))
            continue
        applied[(obj["apiVersion"], kind)] = result
        if current is None:
            outcome.actions.append(("Restored" if seen_before else "Created", f"{kind} {name}"))
        elif _changed(current, result):
            outcome.actions.append(("Updated", f"{kind} {name}"))
    return applied


def _remove_stale(kube: Kube, resource: LLMDeployment, desired: list[dict[str, Any]],
                  applied: dict[tuple[str, str], dict[str, Any]], service_monitor: bool, outcome: Outcome) -> None:
    """Deletes the optional children no longer rendered; the engine pods of
    the other workload kind only once the new kind holds them, so the old
    replicas serve meanwhile (through a refused apply or a missing LWS)."""
    rendered = {(o["apiVersion"], o["kind"]) for o in desired}
    for api_version, kind in OPTIONAL_KINDS:
        if (api_version, kind) in rendered or (kind == servicemonitor.KIND and not service_monitor):
            continue
        if (api_version, kind) in WORKLOADS and leaderworkerset.workload(resource) not in applied:
            continue
        current = kube.get(api_version, kind, resource.namespace, resource.name)
        if current and current["metadata"].get("labels", {}).get(OWNER_LABEL) == resource.name:
            kube.delete(api_version, kind, resource.namespace, resource.name)
            outcome.actions.append(("Deleted", f"{kind} {resource.name}"))


def _scale_to_or_from_zero(kube: Kube, resource: LLMDeployment, body: dict[str, Any],
                           applied: dict[tuple[str, str], dict[str, Any]], outcome: Outcome) -> None:
    """Crosses between zero and one replica as the gateway's last request says (see `scale_to_zero`)."""
    deployment = applied.get(("apps/v1", "Deployment"))
    if deployment is None or not scale_to_zero.enabled(resource):
        return
    replicas = deployment["spec"].get("replicas", 1)
    stamp = (body["metadata"].get("annotations") or {}).get(scale_to_zero.LAST_REQUEST_ANNOTATION)
    target = scale_to_zero.target_replicas(resource, replicas, scale_to_zero.parse_time(stamp),
                                           datetime.now(timezone.utc))
    if target is None:
        return
    try:
        applied[("apps/v1", "Deployment")] = kube.scale_deployment(resource.namespace, resource.name, target,
                                                                   field_manager=scale_to_zero.SCALE_MANAGER)
    except ApiError as err:
        outcome.problems.append(Problem("ScaleFailed", f"Deployment {resource.name} not scaled to {target}: "
                                                       f"{err.message}"))
        return
    if target == 0:
        outcome.actions.append(("ScaledToZero", f"no request for {resource.spec.autoscaling.scale_to_zero_delay_seconds}"
                                                f" s (last: {stamp or 'never'})"))
    else:
        outcome.actions.append(("ScaledFromZero", f"a request arrived at {stamp}"))


def _secret_problems(kube: Kube, resource: LLMDeployment) -> list[Problem]:
    problems = []
    for what, ref in (("API key", resource.spec.api_key_secret_ref),
                      ("Hugging Face token", resource.spec.model.token_secret_ref)):
        if ref is None:
            continue
        secret = kube.get("v1", "Secret", resource.namespace, ref.name)
        if secret is None:
            problems.append(Problem("SecretNotFound", f"{what} Secret {ref.name!r} does not exist"))
        elif ref.key not in (secret.get("data") or {}):
            problems.append(Problem("SecretKeyNotFound", f"{what} Secret {ref.name!r} has no key {ref.key!r}"))
    return problems


def reconcile(kube: Kube, body: dict[str, Any], config: OperatorConfig, *, service_monitor: bool) -> Outcome:
    """Converges the children of the resource `body` and writes its status."""
    resource = LLMDeployment.from_body(body)
    previous = body.get("status") or {}
    outcome = Outcome(status={})
    desired = manifests.render(resource, config, service_monitor=service_monitor)
    if leaderworkerset.spans_nodes(resource) and not kube.serves(leaderworkerset.API_VERSION, leaderworkerset.KIND):
        desired = [o for o in desired if o["kind"] != leaderworkerset.KIND]
        outcome.problems.append(Problem(
            "LeaderWorkerSetNotInstalled", f"engine.nnodes {resource.spec.engine.nnodes} runs each replica as a "
            f"LeaderWorkerSet group, and this cluster does not serve {leaderworkerset.API_VERSION} "
            f"{leaderworkerset.KIND}: install {leaderworkerset.PROJECT}"))
    applied = _apply_children(kube, resource, desired, "observedGeneration" in previous, outcome)
    _remove_stale(kube, resource, desired, applied, service_monitor, outcome)
    _scale_to_or_from_zero(kube, resource, body, applied, outcome)

    outcome.problems += _secret_problems(kube, resource)
    volume = model_volume(resource)
    claim = applied.get(("v1", "PersistentVolumeClaim"))
    if volume.claim and claim is None:
        claim = kube.get("v1", "PersistentVolumeClaim", resource.namespace, volume.claim)
        if claim is None:
            outcome.problems.append(Problem("ClaimNotFound", f"PersistentVolumeClaim {volume.claim!r} does not exist"))
    for adapter_claim in adapter_placement(resource).claims:
        if kube.get("v1", "PersistentVolumeClaim", resource.namespace, adapter_claim) is None:
            outcome.problems.append(Problem("ClaimNotFound", f"PersistentVolumeClaim {adapter_claim!r} of a LoRA "
                                                             "adapter does not exist"))
    pods = kube.list("v1", "Pod", resource.namespace, labels=selector_labels(resource))
    events = []
    if any(p.get("status", {}).get("phase") == "Pending" for p in pods):
        events = sorted(kube.list("v1", "Event", resource.namespace,
                                  fields={"type": "Warning", "involvedObject.kind": "Pod"}),
                        key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    lws = applied.get((leaderworkerset.API_VERSION, leaderworkerset.KIND))
    observed = Observed(deployment=applied.get(("apps/v1", "Deployment")) if lws is None
                        else status.leaderworkerset_as_deployment(lws), claim=claim, pods=pods,
                        events=events, problems=outcome.problems)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    outcome.status = status.compute(resource, observed, previous, now=now, cluster_domain=config.cluster_domain)
    if outcome.status != previous:
        kube.patch_status(API_VERSION, KIND, resource.namespace, resource.name, outcome.status)
    return outcome
