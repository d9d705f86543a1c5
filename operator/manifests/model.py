"""How the model, its LoRA adapters and its draft model reach the engine pod: which volumes hold them
and where.

hf:// models are fetched by an init container into the model cache (a claim
shared by all replicas, or a per-pod emptyDir when the cache is disabled);
pvc:// models are read in place from the named claim. hf:// adapters are
fetched the same way, into the model cache, or into a per-pod emptyDir when
the model is read from a claim; pvc:// adapters are read in place. A draft model for speculative
decoding is placed as an adapter is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..source import parse_source
from ..v1alpha1 import LLMDeployment
from .meta import cache_claim_name

#: Mount point of the model volume in every container of the pod.
MOUNT_PATH = "/models"
VOLUME_NAME = "models"
#: Where hf:// adapters go when the model volume is a read-only claim.
ADAPTER_CACHE_PATH = "/adapters"
ADAPTER_CACHE_VOLUME = "adapters"
#: Where other claims holding pvc:// adapters are mounted, one directory per claim.
ADAPTER_CLAIMS_PATH = "/adapter-claims"
#: Init containers fetching hf:// adapters are named this plus the adapter's index.
ADAPTER_FETCH_PREFIX = "fetch-adapter-"
#: The init container fetching an hf:// draft model.
DRAFT_FETCH_CONTAINER = "fetch-draft"


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
    model_dir = _hf_dir(MOUNT_PATH, source.repo, source.revision)
    if not spec.model_cache.enabled:
        volume = {"name": VOLUME_NAME, "emptyDir": {"sizeLimit": str(spec.model_cache.size)}}
        return ModelVolume(volume, model_dir, fetch=True, claim=None, creates_claim=False)
    claim = spec.model_cache.existing_claim or cache_claim_name(resource)
    volume = {"name": VOLUME_NAME, "persistentVolumeClaim": {"claimName": claim}}
    return ModelVolume(volume, model_dir, fetch=True, claim=claim, creates_claim=not spec.model_cache.existing_claim)


@dataclass(frozen=True)
class AdapterFetch:
    """One init container's work: an hf:// adapter (or draft model) into `dest` on `volume_name` (mounted at
    `mount_path`)."""

    container: str
    source: str
    dest: str
    volume_name: str
    mount_path: str


@dataclass(frozen=True)
class AdapterPlacement:
    #: (name, directory) of every adapter, as `pagoda serve --lora-modules` takes them.
    modules: list[tuple[str, str]] = field(default_factory=list)
    fetches: list[AdapterFetch] = field(default_factory=list)
    #: Volumes and engine mounts beyond the model's.
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    #: Claims of pvc:// adapters other than the model volume's, which must exist.
    claims: list[str] = field(default_factory=list)
    #: Directory of the draft model for speculative decoding, if any.
    draft_dir: str | None = None


def _hf_dir(root: str, repo: str, revision: str | None) -> str:
    return f"{root}/hf/{repo}/{revision or 'main'}"


def adapter_placement(resource: LLMDeployment) -> AdapterPlacement:
    """Where each adapter of the resource, and its draft model, live in the pod, and what puts them there."""
    volume = model_volume(resource)
    placement = AdapterPlacement()
    claims: dict[str, str] = {}  # claim -> mount path
    speculative = resource.spec.engine.speculative_config
    draft = [(DRAFT_FETCH_CONTAINER, "", speculative.model)] if speculative and speculative.model else []
    sources = [(f"{ADAPTER_FETCH_PREFIX}{i}", a.name, a.source) for i, a in enumerate(resource.spec.adapters)]
    for container, name, source_text in sources + draft:
        source = parse_source(source_text)
        if source.scheme == "hf":
            # The model's volume when it is being filled anyway, else a per-pod emptyDir.
            volume_name, root = (VOLUME_NAME, MOUNT_PATH) if volume.fetch else (ADAPTER_CACHE_VOLUME, ADAPTER_CACHE_PATH)
            dest = _hf_dir(root, source.repo, source.revision)
            placement.fetches.append(AdapterFetch(container, source_text, dest, volume_name, root))
        elif source.claim == volume.claim:
            dest = f"{MOUNT_PATH}/{source.path}".rstrip("/")
        else:
            if source.claim not in claims:
                claims[source.claim] = f"{ADAPTER_CLAIMS_PATH}/{len(claims)}"
                claim_volume = f"adapter-claim-{len(claims) - 1}"
                placement.volumes.append({"name": claim_volume, "persistentVolumeClaim": {"claimName": source.claim,
                                                                                           "readOnly": True}})
                placement.mounts.append({"name": claim_volume, "mountPath": claims[source.claim], "readOnly": True})
                placement.claims.append(source.claim)
            dest = f"{claims[source.claim]}/{source.path}".rstrip("/")
        if container == DRAFT_FETCH_CONTAINER:
            placement = dataclasses.replace(placement, draft_dir=dest)
        else:
            placement.modules.append((name, dest))
    if any(f.volume_name == ADAPTER_CACHE_VOLUME for f in placement.fetches):
        placement.volumes.append({"name": ADAPTER_CACHE_VOLUME, "emptyDir": {}})
        placement.mounts.append({"name": ADAPTER_CACHE_VOLUME, "mountPath": ADAPTER_CACHE_PATH, "readOnly": True})
    return placement
