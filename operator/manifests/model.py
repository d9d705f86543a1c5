"""How the model reaches the engine pod: which volume holds it and where.

hf:// models are fetched by an init container into the model cache (a claim
shared by all replicas, or a per-pod emptyDir when the cache is disabled);
pvc:// models are read in place from the named claim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..source import parse_source
from ..v1alpha1 import LLMDeployment
from .meta import cache_claim_name

#: Mount point of the model volume in every container of the pod.
MOUNT_PATH = "/models"
VOLUME_NAME = "models"


@dataclass(frozen=True)
class ModelVolume:
    volume: dict[str, Any]
    #: Directory `pagoda serve` loads the model from.
    model_dir: str
    #: Whether an init container must fetch the model first.
    fetch: bool
    #: The claim behind the volume, None for an emptyDir.
    claim: str | None
    #: Whether the operator creates that claim itself.
    creates_claim: bool


def model_volume(resource: LLMDeployment) -> ModelVolume:
    spec = resource.spec
    source = parse_source(spec.model.source)
    if source.scheme == "pvc":
        volume = {"name": VOLUME_NAME, "persistentVolumeClaim": {"claimName": source.claim, "readOnly": True}}
        model_dir = f"{MOUNT_PATH}/{source.path}".rstrip("/")
        return ModelVolume(volume, model_dir, fetch=False, claim=source.claim, creates_claim=False)
    model_dir = f"{MOUNT_PATH}/hf/{source.repo}/{source.revision or 'main'}"
    if not spec.model_cache.enabled:
        volume = {"name": VOLUME_NAME, "emptyDir": {"sizeLimit": str(spec.model_cache.size)}}
        return ModelVolume(volume, model_dir, fetch=True, claim=None, creates_claim=False)
    claim = spec.model_cache.existing_claim or cache_claim_name(resource)
    volume = {"name": VOLUME_NAME, "persistentVolumeClaim": {"claimName": claim}}
    return ModelVolume(volume, model_dir, fetch=True, claim=claim, creates_claim=not spec.model_cache.existing_claim)
