"""LLMDeployment manifests the e2e scenarios apply: one good sample and a
list of bad ones with the words their refusal must contain.

The field names and messages are those of the CRD in crds/ (issue 5); this
is the one place to change when the schema moves.
"""

from __future__ import annotations

import copy
from typing import Any

API_VERSION = "pagoda.dev/v1alpha1"
KIND = "LLMDeployment"
PLURAL = "llmdeployments.pagoda.dev"


def llm_deployment(name: str, *, tensor_parallel_size: int = 1, max_model_len: int = 2048,
                   autoscaling: bool = True, cache_size: str = "10Gi",
                   storage_class: str | None = None, adapters: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """A small model on `tensor_parallel_size` GPUs with a model cache and,
    by default, queue-depth autoscaling between 1 and 3 replicas.

    `storage_class` names the cluster's bindable class: on an external
    cluster the default class may provision only on real nodes. `adapters`
    ({name, source}) are LoRA adapters served beside the model."""
    spec: dict[str, Any] = {
        "model": {"source": "hf://Qwen/Qwen2.5-0.5B-Instruct", "servedName": "qwen-0.5b"},
        "engine": {"tensorParallelSize": tensor_parallel_size, "maxModelLen": max_model_len},
        "replicas": 1,
        "modelCache": {"size": cache_size},
    }
    if storage_class:
        spec["modelCache"]["storageClassName"] = storage_class
    if adapters:
        spec["adapters"] = copy.deepcopy(adapters)
    if autoscaling:
        spec["autoscaling"] = {"enabled": True, "minReplicas": 1, "maxReplicas": 3, "targetQueueDepth": 4}
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": spec}


def _with(path: str, value: Any) -> dict[str, Any]:
    """The good sample with one field (dotted path under spec) replaced."""
    manifest = llm_deployment("bad")
    node = manifest["spec"]
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = copy.deepcopy(value)
    return manifest


#: (case id, manifest, text the API server's refusal must contain): the
#: CRD's own CEL or schema message for that input.
BAD_MANIFESTS: list[tuple[str, dict[str, Any], str]] = [
    ("min-above-max", _with("autoscaling", {"enabled": True, "minReplicas": 4, "maxReplicas": 2}),
     "autoscaling.minReplicas must not exceed autoscaling.maxReplicas"),
    ("tp-not-power-of-two", _with("engine.tensorParallelSize", 3),
     "engine.tensorParallelSize must be a power of two"),
    ("malformed-source", _with("model.source", "ftp://example.com/model"),
     "model.source must be hf://ORG/NAME[@REVISION] or pvc://CLAIM"),
    ("gpu-utilization-above-one", _with("engine.gpuMemoryUtilization", 1.5),
     "engine.gpuMemoryUtilization must be greater than 0 and at most 1"),
    ("gpu-utilization-zero", _with("engine.gpuMemoryUtilization", 0),
     "engine.gpuMemoryUtilization must be greater than 0 and at most 1"),
    ("negative-replicas", _with("replicas", -1), "spec.replicas in body should be greater than or equal to 0"),
    ("negative-cache-size", _with("modelCache.size", "-10Gi"), "spec.modelCache.size: Invalid value"),
    ("autoscaling-without-bounds", _with("autoscaling", {"enabled": True}),
     "autoscaling.enabled requires both autoscaling.minReplicas and autoscaling.maxReplicas"),
    ("managed-flag-in-extra-args", _with("engine.extraArgs", ["--port", "9000"]),
     "engine.extraArgs must not set --host, --port"),
    ("zero-queue-depth", _with("autoscaling", {"enabled": True, "minReplicas": 1, "maxReplicas": 2,
                                               "targetQueueDepth": 0}),
     "autoscaling.targetQueueDepth must be greater than 0"),
    ("gpus-differ-from-tp", _with("resources.gpus", 2), "resources.gpus must be 0 (CPU only) or equal"),
    ("nnodes-with-a-single-node-cache", _with("engine", {"tensorParallelSize": 2, "nnodes": 2}),
     "engine.nnodes above 1 needs a model every machine can mount"),
]


def claim(name: str, *, storage_class: str, size: str = "1Gi") -> dict[str, Any]:
    """A PersistentVolumeClaim, such as one holding pvc:// LoRA adapters."""
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": storage_class,
                     "resources": {"requests": {"storage": size}}}}
