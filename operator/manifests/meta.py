"""Names, labels and ownership shared by every child of an `LLMDeployment`."""

from __future__ import annotations

from typing import Any

from .. import v1alpha1
from ..v1alpha1 import LLMDeployment

#: Label naming the owning LLMDeployment; the operator watches children by it.
OWNER_LABEL = "pagoda.dev/llmdeployment"
MANAGED_BY = "pagoda-operator"
COMPONENT = "engine"


def selector_labels(resource: LLMDeployment) -> dict[str, str]:
    """The immutable pod selector: changing it would orphan running pods."""
    return {OWNER_LABEL: resource.name, "app.kubernetes.io/component": COMPONENT}


def labels(resource: LLMDeployment) -> dict[str, str]:
    """Labels on every child, so `kubectl get all -l` finds them and the
    operator's watches select them."""
    return {
        **selector_labels(resource),
        "app.kubernetes.io/name": "pagoda",
        "app.kubernetes.io/instance": resource.name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def owner_reference(resource: LLMDeployment) -> dict[str, Any]:
    """Makes the child garbage-collected with the resource."""
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "name": resource.name,
        "uid": resource.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(resource: LLMDeployment, name: str | None = None, *, owned: bool = True,
             annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """Object metadata of a child; `owned=False` leaves it behind on deletion."""
    meta: dict[str, Any] = {
        "name": name or resource.name,
        "namespace": resource.namespace,
        "labels": labels(resource),
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    if owned:
        meta["ownerReferences"] = [owner_reference(resource)]
    return meta


def cache_claim_name(resource: LLMDeployment) -> str:
    """The claim the operator creates for the model cache."""
    return f"{resource.name}-model-cache"


def service_host(resource: LLMDeployment, cluster_domain: str) -> str:
    return f"{resource.name}.{resource.namespace}.svc.{cluster_domain}"


def endpoint(resource: LLMDeployment, cluster_domain: str) -> str:
    """In-cluster base URL of the OpenAI API, as `status.endpoint` reports it."""
    port = resource.spec.service.port
    suffix = "" if port == 80 else f":{port}"
    return f"http://{service_host(resource, cluster_domain)}{suffix}/v1"
