"""The model cache claim, created only when the operator owns the cache."""

from __future__ import annotations

from typing import Any

from ..config import OperatorConfig
from ..v1alpha1 import LLMDeployment
from .meta import cache_claim_name, metadata
from .model import model_volume


def render(resource: LLMDeployment, config: OperatorConfig) -> dict[str, Any] | None:
    """The claim, or None when the model lives elsewhere.

    With `reclaimPolicy: Retain` the claim has no owner reference, so the
    downloaded model survives the resource and a re-created one reuses it.
    """
    if not model_volume(resource).creates_claim:
        return None
    cache = resource.spec.model_cache
    spec: dict[str, Any] = {
        "accessModes": list(cache.access_modes),
        "resources": {"requests": {"storage": str(cache.size)}},
    }
    if cache.storage_class_name:
        spec["storageClassName"] = cache.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(resource, cache_claim_name(resource), owned=cache.reclaim_policy == "Delete"),
        "spec": spec,
    }
