"""Spec to manifests: pure functions, every object valid for Kubernetes 1.37."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pagoda.operator import flags
from pagoda.operator.config import OperatorConfig
from pagoda.operator.manifests import deployment, hpa, leaderworkerset, meta, render
from pagoda.operator.v1alpha1 import LLMDeployment

from . import lws_schema
from .kube_schemas import validate

CONFIG = OperatorConfig()


def resource(spec: dict[str, Any], name: str = "chat") -> LLMDeployment:
    return LLMDeployment.from_body({
        "metadata": {"name": name, "namespace": "ml", "uid": "0000-1111", "generation": 3},
        "spec": {"model": {"source": "hf://acme/chat-7b"}} | spec,
    })


def by_kind(spec: dict[str, Any], **kwargs: Any) -> dict[str, dict[str, Any]]:
    return {obj["kind"]: obj for obj in render(resource(spec), CONFIG, **kwargs)}


def engine_container(spec: dict[str, Any]) -> dict[str, Any]:
    return by_kind(spec)["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def pod_templates(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The engine pod templates of whichever kind runs the replicas: the Deployment's, or a
    LeaderWorkerSet's leader and worker."""
    objects = by_kind(spec)
    if "Deployment" in objects:
        return [objects["Deployment"]["spec"]["template"]]
    group = objects["LeaderWorkerSet"]["spec"]["leaderWorkerTemplate"]
    return [group["leaderTemplate"], group["workerTemplate"]]


SPECS = {
    "minimal": {},
    "cpu-only tiny model": {"resources": {"gpus": 0, "requests": {"cpu": 1, "memory": "2Gi"}},
                            "modelCache": {"enabled": False, "size": "2Gi"}},
    "tp2 autoscaled": {
        "engine": {"tensorParallelSize": 2, "enableExpertParallel": True, "maxModelLen": 8192, "maxNumSeqs": 64, "maxNumBatchedTokens": 8192,
                   "blockSize": 16, "maxQueueLen": 100, "dtype": "bfloat16", "enablePrefixCaching": False,
                   "logLevel": "debug", "schedulingPolicy": "priority", "quantization": "fp8", "kvCacheDtype": "fp8",
                   "mambaSsmCacheDtype": "float32",
                   "speculativeConfig": {"numSpeculativeTokens": 3}, "extraArgs": ["--seed=1"]},
        "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 4, "targetQueueDepth": 2.5,
                        "scaleUp": {"stabilizationWindowSeconds": 0,
                                    "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}]},
                        "scaleDown": {"stabilizationWindowSeconds": 600, "selectPolicy": "Min"}},
        "resources": {"gpuResourceName": "amd.com/gpu", "requests": {"memory": "64Gi"}, "limits": {"memory": "64Gi"}},
    },
    "pvc source": {"model": {"source": "pvc://weights/llama/8b", "servedName": "llama"}},
    "existing cache, retained": {"modelCache": {"existingClaim": "shared-models", "reclaimPolicy": "Retain"}},
    "everything else": {
        "model": {"source": "hf://acme/gated@refs/pr/1", "tokenSecretRef": {"name": "hf", "key": "token"}},
        "image": "registry.local/pagoda:dev", "imagePullPolicy": "Always", "imagePullSecrets": ["regcred"],
        "replicas": 3, "apiKeySecretRef": {"name": "api", "key": "key"},
        "modelCache": {"size": "200Gi", "storageClassName": "fast", "accessModes": ["ReadWriteMany"]},
        "service": {"type": "LoadBalancer", "port": 8080, "annotations": {"lb": "internal"}},
        "scheduling": {"nodeSelector": {"gpu": "h100"},
                       "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}],
                       "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                           {"weight": 1, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]}},
                       "priorityClassName": "inference"},
        "podLabels": {"team": "nlp"}, "podAnnotations": {"note": "x"},
        "env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
    },
    "lora adapters": {
        "adapters": [{"name": "sql", "source": "hf://acme/sql-lora@v2"}, {"name": "chat-fr", "source": "pvc://loras/fr"},
                     {"name": "chat-de", "source": "pvc://loras/de"}],
        "engine": {"maxLoras": 2, "maxLoraRank": 64},
    },
    "multi-node": {
        "engine": {"tensorParallelSize": 8, "nnodes": 2},
        "modelCache": {"size": "200Gi", "accessModes": ["ReadWriteMany"]},
        "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3},
        "adapters": [{"name": "sql", "source": "hf://acme/sql-lora"}],
        "podAnnotations": {"note": "x"},
    },
    "lora adapters, pvc model": {
        "model": {"source": "pvc://weights/llama/8b", "servedName": "llama"},
        "adapters": [{"name": "sql", "source": "hf://acme/sql-lora"}, {"name": "own", "source": "pvc://weights/loras/own"}],
    },
}


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_every_rendered_object_is_valid_owned_and_labelled(spec: dict[str, Any]) -> None:
    objects = render(resource(spec), CONFIG, service_monitor=True)
    for obj in objects:
        if obj["kind"] == leaderworkerset.KIND:
            lws_schema.validate(obj)
        elif obj["kind"] != "ServiceMonitor":  # not a core kind: no published schema
            validate(obj)
        assert obj["metadata"]["namespace"] == "ml"
        assert obj["metadata"]["labels"][meta.OWNER_LABEL] == "chat"
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "pagoda-operator"
    owned = [o for o in objects if o["metadata"].get("ownerReferences")]
    assert all(o["metadata"]["ownerReferences"][0]["uid"] == "0000-1111" for o in owned)
    assert len(owned) >= len(objects) - 1  # only a retained claim is left unowned


def test_minimal_spec_defaults() -> None:
    objects = by_kind({})
    assert set(objects) == {"PersistentVolumeClaim", "Deployment", "Service", "PodDisruptionBudget"}
    dep = objects["Deployment"]["spec"]
    pod = dep["template"]["spec"]
    assert dep["replicas"] == 1
    assert pod["containers"][0]["resources"] == {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}
    assert pod["initContainers"][0]["command"] == [
        "pagoda", "fetch-model", "hf://acme/chat-7b", "/models/hf/acme/chat-7b/main"]
    assert objects["PersistentVolumeClaim"]["spec"] == {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "50Gi"}}}
    assert objects["Service"]["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert meta.endpoint(resource({}), "cluster.local") == "http://chat.ml.svc.cluster.local/v1"


def test_pod_is_hardened_and_probed() -> None:
    pod = by_kind({})["Deployment"]["spec"]["template"]["spec"]
    engine = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] and engine["securityContext"]["readOnlyRootFilesystem"]
    assert engine["readinessProbe"]["httpGet"]["path"] == flags.READINESS_PATH
    assert engine["livenessProbe"]["httpGet"]["path"] == flags.LIVENESS_PATH
    startup = engine["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}} in pod["volumes"]
    assert pod["terminationGracePeriodSeconds"] > flags.DRAIN_SECONDS + deployment.PRE_STOP_SECONDS
    annotations = by_kind({})["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == flags.METRICS_PATH


def test_autoscaling_hands_replicas_to_the_hpa() -> None:
    objects = by_kind(SPECS["tp2 autoscaled"])
    assert "replicas" not in objects["Deployment"]["spec"]
    spec = objects["HorizontalPodAutoscaler"]["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat"}
    assert (spec["minReplicas"], spec["maxReplicas"]) == (1, 4)
    assert spec["metrics"][0]["pods"] == {"metric": {"name": "pagoda_requests_waiting"},
                                          "target": {"type": "AverageValue", "averageValue": "2500m"}}
    assert spec["behavior"]["scaleDown"] == {"stabilizationWindowSeconds": 600, "selectPolicy": "Min"}


def test_gpus_follow_tensor_parallel_size_and_resource_name() -> None:
    engine = engine_container(SPECS["tp2 autoscaled"])
    assert engine["resources"]["limits"] == {"memory": "64Gi", "amd.com/gpu": "2"}
    assert engine["args"][engine["args"].index("--tensor-parallel-size") + 1] == "2"
    tolerations = by_kind(SPECS["tp2 autoscaled"])["Deployment"]["spec"]["template"]["spec"]["tolerations"]
    assert {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations


def test_cpu_only_has_no_gpus_and_a_pod_local_cache() -> None:
    objects = by_kind(SPECS["cpu-only tiny model"])
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert "PersistentVolumeClaim" not in objects
    assert pod["containers"][0]["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}}
    assert "tolerations" not in pod
    assert pod["volumes"][0] == {"name": "models", "emptyDir": {"sizeLimit": "2Gi"}}


def test_pvc_source_is_mounted_read_only_without_fetching() -> None:
    objects = by_kind(SPECS["pvc source"])
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert "PersistentVolumeClaim" not in objects and "initContainers" not in pod
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "weights", "readOnly": True}
    command = pod["containers"][0]["args"]
    assert command[0] == "/models/llama/8b"
    assert command[command.index("--served-model-name") + 1] == "llama"


def test_existing_claim_is_used_not_created() -> None:
    objects = by_kind(SPECS["existing cache, retained"])
    assert "PersistentVolumeClaim" not in objects
    volume = objects["Deployment"]["spec"]["template"]["spec"]["volumes"][0]
    assert volume["persistentVolumeClaim"]["claimName"] == "shared-models"


def test_retained_cache_claim_has_no_owner() -> None:
    claim = by_kind({"modelCache": {"reclaimPolicy": "Retain"}})["PersistentVolumeClaim"]
    assert "ownerReferences" not in claim["metadata"]
    assert claim["metadata"]["name"] == "chat-model-cache"


def test_serve_args_cover_every_engine_flag() -> None:
    engine = engine_container(SPECS["tp2 autoscaled"])
    assert engine["command"] == list(flags.SERVE_COMMAND)
    command = engine["args"]
    used = {arg for spec in SPECS.values() for template in pod_templates(spec)
            for arg in template["spec"]["containers"][0]["args"] if arg.startswith("--")}
    assert set(flags.ALL_FLAGS) - used == {flags.API_KEY}
    assert command[-1] == "--seed=1"
    assert "--enable-prefix-caching" in engine_container({})["args"]


def test_speculative_config_reaches_the_engine_as_its_json() -> None:
    """The flag's value is what the engine's own parser accepts, with the resource's settings and
    the CRD's defaults; the CRD's bound on drafts is the engine's."""
    from pagoda.engine.spec_decode import MAX_SPECULATIVE_TOKENS, SpeculativeConfig
    from pagoda.operator.v1alpha1 import MAX_SPECULATIVE_TOKENS as CRD_MAX

    args = engine_container(SPECS["tp2 autoscaled"])["args"]
    parsed = SpeculativeConfig.parse(json.loads(args[args.index(flags.SPECULATIVE_CONFIG) + 1]))
    assert parsed == SpeculativeConfig(num_speculative_tokens=3, prompt_lookup_max=4, prompt_lookup_min=1)
    assert CRD_MAX == MAX_SPECULATIVE_TOKENS


def test_secrets_reach_the_pod_only_through_the_environment() -> None:
    objects = by_kind(SPECS["everything else"])
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    engine, fetcher = pod["containers"][0], pod["initContainers"][0]
    assert {"name": flags.API_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": "api", "key": "key"}}} in engine["env"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}} in fetcher["env"]
    assert not any("api" == a or "key" == a for a in engine["args"])
    assert {"name": "NCCL_DEBUG", "value": "INFO"} in engine["env"]
    assert fetcher["command"][-1] == "/models/hf/acme/gated/refs/pr/1"


def test_user_labels_never_override_the_selector() -> None:
    dep = by_kind({"podLabels": {meta.OWNER_LABEL: "other", "team": "a"}})["Deployment"]["spec"]
    labels = dep["template"]["metadata"]["labels"]
    assert labels[meta.OWNER_LABEL] == "chat" and labels["team"] == "a"
    assert dep["selector"]["matchLabels"].items() <= labels.items()


def test_service_monitor_only_when_asked() -> None:
    assert "ServiceMonitor" not in by_kind({})
    monitor = by_kind({}, service_monitor=True)["ServiceMonitor"]
    assert monitor["spec"]["endpoints"][0] == {"port": "http", "path": "/metrics", "interval": "15s"}


def test_served_name_defaults() -> None:
    assert resource({}).spec.served_name == "acme/chat-7b"
    assert resource({"model": {"source": "pvc://weights/a/b/"}}).spec.served_name == "b"
    assert resource({"model": {"source": "pvc://weights"}}).spec.served_name == "weights"


@pytest.mark.parametrize(("value", "text"), [(4, "4"), (4.0, "4"), (0.5, "500m"), (2.25, "2250m")])
def test_quantity(value: float, text: str) -> None:
    assert hpa.quantity(value) == text


def test_tensor_parallel_replica_gets_its_gpus_and_shared_memory() -> None:
    pod = by_kind({"engine": {"tensorParallelSize": 4}})["Deployment"]["spec"]["template"]["spec"]
    engine = pod["containers"][0]
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert engine["args"][engine["args"].index(flags.TENSOR_PARALLEL_SIZE) + 1] == "4"
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": f"{4 * deployment.SHM_GIB_PER_GPU}Gi"}


def _pod(spec: dict[str, Any]) -> dict[str, Any]:
    return by_kind(spec)["Deployment"]["spec"]["template"]["spec"]


def _arg(container: dict[str, Any], flag: str) -> str:
    return container["args"][container["args"].index(flag) + 1]


def test_adapters_are_fetched_beside_the_model_or_read_in_place() -> None:
    pod = _pod(SPECS["lora adapters"])
    init = {c["name"]: c for c in pod["initContainers"]}
    assert list(init) == ["fetch-model", "fetch-adapter-0"]
    assert init["fetch-adapter-0"]["command"][-2:] == ["hf://acme/sql-lora@v2", "/models/hf/acme/sql-lora/v2"]
    assert init["fetch-adapter-0"]["volumeMounts"][0] == {"name": "models", "mountPath": "/models"}
    # One volume for the other claim, however many adapters it holds; read-only everywhere.
    claims = [v for v in pod["volumes"] if v["name"].startswith("adapter-claim-")]
    assert claims == [{"name": "adapter-claim-0", "persistentVolumeClaim": {"claimName": "loras", "readOnly": True}}]
    engine = pod["containers"][0]
    assert {"name": "adapter-claim-0", "mountPath": "/adapter-claims/0", "readOnly": True} in engine["volumeMounts"]
    assert _arg(engine, flags.LORA_MODULES) == \
        "sql=/models/hf/acme/sql-lora/v2,chat-fr=/adapter-claims/0/fr,chat-de=/adapter-claims/0/de"
    assert (_arg(engine, flags.MAX_LORAS), _arg(engine, flags.MAX_LORA_RANK)) == ("2", "64")


def test_adapters_of_a_model_read_from_a_claim() -> None:
    """The model's claim is read-only: hf:// adapters go to a per-pod emptyDir; an adapter on
    the model's own claim is read from its mount."""
    pod = _pod(SPECS["lora adapters, pvc model"])
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-adapter-0"]
    fetch = pod["initContainers"][0]
    assert fetch["command"][-1] == "/adapters/hf/acme/sql-lora/main"
    assert fetch["volumeMounts"][0] == {"name": "adapters", "mountPath": "/adapters"}
    assert {"name": "adapters", "emptyDir": {}} in pod["volumes"]
    engine = pod["containers"][0]
    assert {"name": "adapters", "mountPath": "/adapters", "readOnly": True} in engine["volumeMounts"]
    assert _arg(engine, flags.LORA_MODULES) == "sql=/adapters/hf/acme/sql-lora/main,own=/models/loras/own"
    assert flags.MAX_LORAS not in engine["args"]
    assert "--lora-modules" not in engine_container({})["args"]


def test_a_replica_over_several_machines_is_a_leaderworkerset() -> None:
    """One group per replica: the leader serves as node 0, the workers run headless ranks, all meeting
    at the leader's address that LWS injects; each pod holds its machine's share of the GPUs."""
    objects = by_kind(SPECS["multi-node"])
    assert "Deployment" not in objects
    lws = objects["LeaderWorkerSet"]
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    assert "replicas" not in lws["spec"]  # autoscaled: the HPA's
    group = lws["spec"]["leaderWorkerTemplate"]
    assert (group["size"], group["restartPolicy"]) == (2, "RecreateGroupOnPodRestart")
    leader, worker = (group[t]["spec"]["containers"][0] for t in ("leaderTemplate", "workerTemplate"))
    multi_node = [flags.NNODES, "2", flags.NODE_RANK, "0", flags.MASTER_ADDR, "$(LWS_LEADER_ADDRESS)",
                  flags.MASTER_PORT, "29500"]
    assert leader["args"][-len(multi_node):] == multi_node
    assert worker["args"][-len(multi_node) - 1:] == [*multi_node[:3], "$(LWS_WORKER_INDEX)", *multi_node[4:],
                                                     flags.HEADLESS]
    assert leader["args"][:-len(multi_node)] == worker["args"][:-len(multi_node) - 1]
    assert _arg(leader, flags.TENSOR_PARALLEL_SIZE) == "8"
    for container in (leader, worker):
        assert container["resources"]["limits"] == {"nvidia.com/gpu": "4"}
    assert leader["readinessProbe"]["httpGet"]["path"] == flags.READINESS_PATH and leader["ports"]
    assert not {"ports", "startupProbe", "livenessProbe", "readinessProbe"} & set(worker)
    leader_meta, worker_meta = group["leaderTemplate"]["metadata"], group["workerTemplate"]["metadata"]
    assert leader_meta["annotations"]["prometheus.io/scrape"] == "true"
    assert worker_meta["annotations"] == {"note": "x"}  # no server to scrape
    assert leader_meta["labels"] == worker_meta["labels"] == meta.labels(resource(SPECS["multi-node"]))
    for template in (group["leaderTemplate"], group["workerTemplate"]):
        shm = next(v for v in template["spec"]["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"]["sizeLimit"] == f"{4 * deployment.SHM_GIB_PER_GPU}Gi"
        assert [c["name"] for c in template["spec"]["initContainers"]][0] == deployment.FETCH_CONTAINER


def test_a_multi_node_service_selects_leaders_and_the_hpa_scales_groups() -> None:
    objects = by_kind(SPECS["multi-node"])
    assert objects["Service"]["spec"]["selector"] == {
        **meta.selector_labels(resource({})), leaderworkerset.WORKER_INDEX_LABEL: "0"}
    assert objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"] == {
        "apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet", "name": "chat"}
    # Every pod of the groups, workers too: a drain takes one group (one replica) down at a time.
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == meta.selector_labels(resource({}))
    assert by_kind({})["Service"]["spec"]["selector"] == meta.selector_labels(resource({}))


def test_a_multi_node_replica_count_is_the_groups() -> None:
    spec = by_kind(SPECS["multi-node"] | {"autoscaling": {}, "replicas": 2})["LeaderWorkerSet"]["spec"]
    assert spec["replicas"] == 2


@pytest.mark.parametrize(("draft", "fetched", "directory"), [
    ("hf://org/draft-0.5b", True, "/models/hf/org/draft-0.5b/main"),
    ("pvc://weights/llama/8b-draft", False, "/models/llama/8b-draft"),
])
def test_a_draft_model_is_placed_as_an_adapter_and_named_by_its_directory(draft: str, fetched: bool,
                                                                           directory: str) -> None:
    """speculativeConfig.model is a source: fetched into the model cache by its own init container, or read
    from the model's claim; the engine gets the directory in its --speculative-config."""
    model = "hf://org/target" if fetched else "pvc://weights/llama/8b"
    spec = {"model": {"source": model},
            "engine": {"speculativeConfig": {"method": "draft_model", "numSpeculativeTokens": 5, "model": draft}}}
    pod = by_kind(spec)["Deployment"]["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    config = json.loads(args[args.index(flags.SPECULATIVE_CONFIG) + 1])
    assert config["model"] == directory and config["method"] == "draft_model"
    from pagoda.engine.spec_decode import SpeculativeConfig

    assert SpeculativeConfig.parse(config).model == directory
    fetches = {c["name"]: c for c in pod.get("initContainers", [])}
    assert ("fetch-draft" in fetches) == fetched
    if fetched:
        assert fetches["fetch-draft"]["command"][-2:] == [draft, directory]
