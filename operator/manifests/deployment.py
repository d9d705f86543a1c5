"""The engine Deployment: `pagoda serve` with GPUs, probes and a hardened pod.

Its pod template (`pod_template`) is also each pod of a multi-node replica's
LeaderWorkerSet (`leaderworkerset.py`), so both kinds run the same pod.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .. import fetch, flags
from ..config import OperatorConfig
from ..v1alpha1 import EngineSpec, LLMDeployment
from .meta import labels, metadata, selector_labels
from .model import MOUNT_PATH, VOLUME_NAME, AdapterPlacement, adapter_placement, model_volume

CONTAINER = "engine"
FETCH_CONTAINER = "fetch-model"
#: Seconds a rollout may take before the Deployment reports
#: ProgressDeadlineExceeded (and the resource Degraded): pulling a large
#: image and loading weights is slow, so well above the default ten minutes.
PROGRESS_DEADLINE_SECONDS = 3600
#: The startup probe allows this long for loading weights before liveness
#: checks start killing the pod.
STARTUP_SECONDS = 1800
#: Pause before SIGTERM so Service endpoints drop the pod before it drains.
PRE_STOP_SECONDS = 5
#: Shared memory per GPU of a replica (NCCL keeps per-peer buffers there).
SHM_GIB_PER_GPU = 2


def serve_args(engine: EngineSpec, served_name: str, model_dir: str,
               adapters: Sequence[tuple[str, str]] = (), node_args: Sequence[str] = (),
               draft_dir: str | None = None) -> list[str]:
    """The arguments of `pagoda serve` for one pod; `adapters` are (name, directory) of its LoRA adapters,
    `node_args` where the pod stands in a replica spanning several machines, `draft_dir` where its
    draft model for speculative decoding is.

    Optional settings are passed only when set, so the engine's own defaults
    apply otherwise; the API key comes from the environment (`flags.API_KEY_ENV`),
    never argv, where any process on the node could read it.
    """
    args = [model_dir,
            flags.HOST, "0.0.0.0", flags.PORT, str(flags.DEFAULT_PORT),
            flags.SERVED_MODEL_NAME, served_name,
            flags.TENSOR_PARALLEL_SIZE, str(engine.tensor_parallel_size),
            flags.DRAIN_TIMEOUT, str(flags.DRAIN_SECONDS),
            flags.DTYPE, engine.dtype,
            flags.GPU_MEMORY_UTILIZATION, str(engine.gpu_memory_utilization),
            flags.ENABLE_PREFIX_CACHING if engine.enable_prefix_caching else flags.NO_ENABLE_PREFIX_CACHING]
    optional = ((flags.MAX_MODEL_LEN, engine.max_model_len), (flags.MAX_NUM_SEQS, engine.max_num_seqs),
                (flags.MAX_NUM_BATCHED_TOKENS, engine.max_num_batched_tokens),
                (flags.BLOCK_SIZE, engine.block_size), (flags.MAX_QUEUE_LEN, engine.max_queue_len),
                (flags.LOG_LEVEL, engine.log_level), (flags.SCHEDULING_POLICY, engine.scheduling_policy),
                (flags.MAX_LORAS, engine.max_loras),
                (flags.MAX_LORA_RANK, engine.max_lora_rank), (flags.QUANTIZATION, engine.quantization),
                (flags.KV_CACHE_DTYPE, engine.kv_cache_dtype), (flags.MAMBA_SSM_CACHE_DTYPE, engine.mamba_ssm_cache_dtype))
    for flag, value in optional:
        if value is not None:
            args += [flag, str(value)]
    if engine.enable_expert_parallel:
        args.append(flags.ENABLE_EXPERT_PARALLEL)
    if engine.speculative_config is not None:  # the engine reads vLLM's JSON, with its snake_case keys
        speculative = engine.speculative_config.model_dump(exclude_none=True)
        if draft_dir is not None:  # the draft model's directory in the pod, not its source
            speculative["model"] = draft_dir
        args += [flags.SPECULATIVE_CONFIG, json.dumps(speculative, sort_keys=True)]
    if adapters:
        args += [flags.LORA_MODULES, ",".join(f"{name}={path}" for name, path in adapters)]
    return args + list(node_args) + list(engine.extra_args)


def _secret_env(name: str, ref: Any) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _resources(resource: LLMDeployment, config: OperatorConfig) -> dict[str, Any]:
    """User cpu/memory plus the GPUs of one replica (requests equal limits,
    as extended resources require)."""
    spec = resource.spec
    requests = {k: str(v) for k, v in spec.resources.requests.items()}
    limits = {k: str(v) for k, v in spec.resources.limits.items()}
    if spec.gpus:
        gpu = spec.resources.gpu_resource_name or config.gpu_resource_name
        requests[gpu] = limits[gpu] = str(spec.gpus)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _fetch_container(resource: LLMDeployment, image: str, name: str, source: str, dest: str,
                     volume_name: str, mount_path: str) -> dict[str, Any]:
    """Downloads a model or an adapter into its volume once; a no-op when already there."""
    env: list[dict[str, Any]] = [{"name": "HOME", "value": "/tmp"}]
    if resource.spec.model.token_secret_ref:
        env.append(_secret_env("HF_TOKEN", resource.spec.model.token_secret_ref))
    return {
        "name": name,
        "image": image,
        "command": [*fetch.COMMAND, source, dest],
        "env": env,
        "volumeMounts": [{"name": volume_name, "mountPath": mount_path}, {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": _container_security(),
    }


def _serving(container: dict[str, Any]) -> None:
    """Adds what only a pod running the HTTP server has: its port, probes and the pause before draining."""
    probe = {"httpGet": {"path": flags.LIVENESS_PATH, "port": "http"}}
    container.update({
        "ports": [{"name": "http", "containerPort": flags.DEFAULT_PORT, "protocol": "TCP"}],
        "startupProbe": {**probe, "periodSeconds": 10, "failureThreshold": STARTUP_SECONDS // 10},
        "livenessProbe": {**probe, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": flags.READINESS_PATH, "port": "http"},
                           "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 2},
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
    })


def _engine_container(resource: LLMDeployment, config: OperatorConfig, image: str, model_dir: str,
                      adapters: AdapterPlacement, node_args: Sequence[str], serving: bool) -> dict[str, Any]:
    spec = resource.spec
    env: list[dict[str, Any]] = [{"name": "HOME", "value": "/tmp"}]
    if spec.api_key_secret_ref:
        env.append(_secret_env(flags.API_KEY_ENV, spec.api_key_secret_ref))
    env += [dict(e) for e in spec.env]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        # The command is explicit, so any image with pagoda on its PATH works
        # whatever its entrypoint; the settings are the arguments.
        "command": list(flags.SERVE_COMMAND),
        "args": serve_args(spec.engine, spec.served_name, model_dir, adapters.modules, node_args, adapters.draft_dir),
        "env": env,
        "resources": _resources(resource, config),
        "volumeMounts": [
            {"name": VOLUME_NAME, "mountPath": MOUNT_PATH, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},
            *adapters.mounts,
        ],
        "securityContext": _container_security(),
    }
    if serving:
        _serving(container)
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    return container


def _shm_volume(gpus: int) -> dict[str, Any]:
    """/dev/shm in memory, for NCCL's intra-node buffers and torch's shared tensors.

    Its size grows with the tensor-parallel ranks that share it; it counts
    against the pod's memory, so it is bounded rather than left unlimited.
    """
    return {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{max(gpus, 1) * SHM_GIB_PER_GPU}Gi"}}


def _pod_spec(resource: LLMDeployment, config: OperatorConfig, node_args: Sequence[str],
              serving: bool) -> dict[str, Any]:
    spec = resource.spec
    image = spec.image or config.default_image
    volume = model_volume(resource)
    adapters = adapter_placement(resource)
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": PRE_STOP_SECONDS + flags.DRAIN_SECONDS + 5,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": config.run_as_user,
            "runAsGroup": config.run_as_user,
            "fsGroup": config.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_engine_container(resource, config, image, volume.model_dir, adapters, node_args, serving)],
        "volumes": [
            volume.volume,
            _shm_volume(spec.gpus),
            {"name": "tmp", "emptyDir": {}},
            *adapters.volumes,
        ],
    }
    init = [_fetch_container(resource, image, FETCH_CONTAINER, spec.model.source, volume.model_dir, VOLUME_NAME,
                             MOUNT_PATH)] if volume.fetch else []
    init += [_fetch_container(resource, image, f.container, f.source, f.dest, f.volume_name, f.mount_path)
             for f in adapters.fetches]
    if init:
        pod["initContainers"] = init
    scheduling = spec.scheduling
    tolerations = [dict(t) for t in scheduling.tolerations]
    if spec.gpus:
        # GPU nodes are commonly tainted with their resource name.
        gpu = spec.resources.gpu_resource_name or config.gpu_resource_name
        tolerations.append({"key": gpu, "operator": "Exists", "effect": "NoSchedule"})
    if tolerations:
        pod["tolerations"] = tolerations
    if scheduling.node_selector:
        pod["nodeSelector"] = dict(scheduling.node_selector)
    if scheduling.affinity:
        pod["affinity"] = dict(scheduling.affinity)
    if scheduling.priority_class_name:
        pod["priorityClassName"] = scheduling.priority_class_name
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in spec.image_pull_secrets]
    return pod


def pod_template(resource: LLMDeployment, config: OperatorConfig, node_args: Sequence[str] = (), *,
                 serving: bool = True) -> dict[str, Any]:
    """The engine pod; one that is not `serving` (a headless machine of a
    multi-node replica) has no HTTP server, hence no port, probes or scrape annotations."""
    spec = resource.spec
    annotations = dict(spec.pod_annotations)
    if serving:
        annotations |= {"prometheus.io/scrape": "true", "prometheus.io/port": str(flags.DEFAULT_PORT),
                        "prometheus.io/path": flags.METRICS_PATH}
    metadata: dict[str, Any] = {"labels": {**spec.pod_labels, **labels(resource)}}
    if annotations:
        metadata["annotations"] = annotations
    return {"metadata": metadata, "spec": _pod_spec(resource, config, node_args, serving)}


def replicas(resource: LLMDeployment) -> dict[str, int]:
    """`.spec.replicas`, left out under autoscaling so the HPA alone owns it
    and the operator never fights it."""
    return {} if resource.spec.autoscaling.enabled else {"replicas": resource.spec.replicas}


def render(resource: LLMDeployment, config: OperatorConfig) -> dict[str, Any]:
    """The Deployment of a replica that fits one machine."""
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(resource)},
        # Surge instead of taking a replica down: an endpoint keeps its capacity
        # during a rollout, at the price of one replica's GPUs.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "progressDeadlineSeconds": PROGRESS_DEADLINE_SECONDS,
        "revisionHistoryLimit": 3,
        "template": pod_template(resource, config),
        **replicas(resource),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(resource),
        "spec": deployment_spec,
    }
