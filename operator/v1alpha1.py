"""The `LLMDeployment` API, version v1alpha1, as typed models.

These models are the single source of truth of the resource: the CRD's
OpenAPI schema, its defaults and its CEL validation rules are generated from
them (see `crd.py`), and the operator parses every object it reconciles with
them, so the defaults the API server applies and the defaults the operator
assumes can never disagree.

Cross-field rules are CEL (`x-kubernetes-validations`) so the API server
refuses bad input at apply time with the message written here; the operator
never sees such an object.  Field names are snake_case in Python and
camelCase on the wire.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

from . import flags
from .source import PATTERN as SOURCE_PATTERN
from .source import parse_source

GROUP = "pagoda.dev"
VERSION = "v1alpha1"
KIND = "LLMDeployment"
PLURAL = "llmdeployments"
SINGULAR = "llmdeployment"
SHORT_NAMES = ("llmd",)
API_VERSION = f"{GROUP}/{VERSION}"

#: Powers of two up to the largest tensor-parallel group of one node.
TENSOR_PARALLEL_SIZES = (1, 2, 4, 8, 16, 32, 64)
#: Most machines one replica may span (`pagoda serve --nnodes`).
MAX_NNODES = 16
#: LoRA adapter names are what clients send as `model`; without "/" they
#: never clash with the ORG/NAME default name of an hf:// model.
ADAPTER_NAME_PATTERN = "^[A-Za-z0-9][-A-Za-z0-9_.]*$"
MAX_ADAPTERS = 32
#: Children carry the resource's name plus a suffix; a Service name is a
#: DNS-1035 label of at most 63 characters.
MAX_NAME_LENGTH = 50


def rule(expression: str, message: str) -> dict[str, str]:
    """One CEL validation rule as the CRD schema spells it.

    Messages are static: the API server prefixes them with the field path and
    value, and a messageExpression quoting values exceeds the CEL cost budget.
    """
    return {"rule": expression, "message": message}


def _rules(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


#: A Kubernetes quantity ("50Gi", "500m", 4): integer or string, positive.
Quantity = Annotated[
    int | str,
    WithJsonSchema({
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "maxLength": 64,
        "x-kubernetes-validations": [rule(
            "type(self) == int ? self > 0 : (isQuantity(self) && quantity(self).isGreaterThan(quantity('0')))",
            "must be a positive quantity, such as 4, 500m or 50Gi",
        )],
    }),
]

#: Objects of the core API passed through to the pod unchanged (tolerations,
#: affinity, env entries): the API server validates them when the Deployment
#: is applied, and the operator reports a refusal as Degraded.
KubeObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]


def _nested(model: type[BaseModel]) -> Any:
    """A sub-object that is always present: the API server defaults it to `{}`
    and then applies its fields' own defaults, exactly as pydantic does."""
    return Field(default_factory=model, json_schema_extra={"default": {}})


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class SecretKeyRef(_Model):
    """A key of a Secret in the resource's namespace."""

    name: str = Field(min_length=1, max_length=253, description="Name of the Secret.")
    key: str = Field(min_length=1, max_length=253, description="Key within the Secret.")


class ModelSpec(_Model):
    """Which model to serve and under which name."""

    source: str = Field(
        max_length=512,
        description="hf://ORG/NAME[@REVISION] (downloaded once into the model cache) "
                    "or pvc://CLAIM[/PATH] (an existing claim holding the model files).",
        json_schema_extra=_rules(rule(
            f"self.matches('{SOURCE_PATTERN}')",
            "model.source must be hf://ORG/NAME[@REVISION] or pvc://CLAIM[/PATH]",
        )),
    )
    served_name: str | None = Field(
        None, min_length=1, max_length=256,
        description="Model name clients send in the OpenAI API; default: ORG/NAME of the source.")
    token_secret_ref: SecretKeyRef | None = Field(
        None, description="Hugging Face token for gated models (exposed to the fetcher as HF_TOKEN).")


#: Most draft tokens per step (the engine's MAX_SPECULATIVE_TOKENS; a test keeps the two equal).
MAX_SPECULATIVE_TOKENS = 16


class SpeculativeSpec(_Model):
    """Speculative decoding (`pagoda serve --speculative-config`): drafts from the text's earlier tokens
    (ngram) or from a smaller model sharing the served model's tokenizer (draft_model, fetched or read
    like the model), verified in one pass; outputs are those of plain decoding."""

    model_config = ConfigDict(json_schema_extra=_rules(
        rule("self.promptLookupMin <= self.promptLookupMax",
             "engine.speculativeConfig.promptLookupMin must be at most promptLookupMax"),
        rule("(self.method == 'draft_model') == has(self.model)",
             "engine.speculativeConfig.model is required with method draft_model, and only with it"),
    ))

    method: Literal["ngram", "draft_model"] = "ngram"
    model: str | None = Field(
        None, max_length=512,
        description="The draft model: hf://ORG/NAME[@REVISION] (fetched with the model) or pvc://CLAIM[/PATH].",
        json_schema_extra=_rules(rule(
            f"self.matches('{SOURCE_PATTERN}')",
            "engine.speculativeConfig.model must be hf://ORG/NAME[@REVISION] or pvc://CLAIM[/PATH]",
        )),
    )
    num_speculative_tokens: int = Field(ge=1, le=MAX_SPECULATIVE_TOKENS, description="Draft tokens per step.")
    prompt_lookup_max: int = Field(4, ge=1, le=64, description="Longest n-gram matched against earlier text.")
    prompt_lookup_min: int = Field(1, ge=1, le=64, description="Shortest n-gram matched.")


class EngineSpec(_Model):
    """Settings of `pagoda serve`, one field per flag."""

    model_config = ConfigDict(json_schema_extra=_rules(
        rule("!has(self.maxNumBatchedTokens) || !has(self.maxModelLen) || self.maxNumBatchedTokens >= self.maxModelLen",
             "engine.maxNumBatchedTokens must be at least engine.maxModelLen, or a full-length prompt never fits a batch"),
        rule("!has(self.nnodes) || !has(self.tensorParallelSize) || self.tensorParallelSize % self.nnodes == 0",
             "engine.nnodes must divide engine.tensorParallelSize: every machine holds the same number of ranks"),
        rule("!has(self.speculativeConfig) || self.speculativeConfig.method != 'draft_model' || "
             "!has(self.tensorParallelSize) || self.tensorParallelSize == 1",
             "engine.speculativeConfig with a draft model needs engine.tensorParallelSize 1"),
    ))

    tensor_parallel_size: int = Field(
        1, description="GPUs one replica shards the model over; a power of two.",
        json_schema_extra=_rules(rule(
            f"self in {list(TENSOR_PARALLEL_SIZES)}",
            "engine.tensorParallelSize must be a power of two between 1 and 64",
        )))
    enable_expert_parallel: bool = Field(
        False, description="MoE models: each of the tensorParallelSize GPUs holds whole experts (E / "
        "tensorParallelSize of them) instead of a slice of every expert, as vLLM's --enable-expert-parallel.")
    nnodes: int = Field(
        1, ge=1, le=MAX_NNODES,
        description="Machines one replica spans; tensorParallelSize / nnodes GPUs on each. Above 1 the replica is "
                    "a LeaderWorkerSet group (sigs.k8s.io/lws must be installed): the leader pod serves, the others "
                    "run headless ranks.")
    max_model_len: int | None = Field(None, ge=1, description="Longest prompt plus completion, in tokens.")
    max_num_seqs: int | None = Field(None, ge=1, description="Most sequences in one batch.")
    max_num_batched_tokens: int | None = Field(None, ge=1, description="Most tokens in one engine step.")
    block_size: int | None = Field(None, ge=1, le=1024, description="Tokens per KV-cache block.")
    max_queue_len: int | None = Field(None, ge=0, description="Waiting requests before the server answers 503.")
    gpu_memory_utilization: float = Field(
        0.9, description="Fraction of each GPU's memory the engine may use, in (0, 1].",
        json_schema_extra=_rules(rule(
            "self > 0.0 && self <= 1.0",
            "engine.gpuMemoryUtilization must be greater than 0 and at most 1",
        )))
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    enable_prefix_caching: bool = True
    log_level: Literal["debug", "info", "warning", "error", "critical"] | None = None
    scheduling_policy: Literal["fcfs", "priority"] | None = Field(
        None, description="priority: requests' `priority` field (lower first) orders waiting and preemption.")
    max_loras: int | None = Field(None, ge=1, le=64, description="Most LoRA adapters in one batch.")
    max_lora_rank: int | None = Field(None, ge=1, le=512, description="Largest LoRA adapter rank served.")
    speculative_config: SpeculativeSpec | None = None
    quantization: Literal["fp8", "bitsandbytes"] | None = Field(
        None, description="Quantization at load of a full-precision checkpoint (quantized checkpoints are served "
        "as they are without it). fp8: projections in FP8 with 128x128 block scales, half the weight memory and "
        "bytes per decode step; bitsandbytes: attention and MLP projections in NF4 (blocks of 64), a quarter.")
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] | None = Field(
        None, description="fp8 (fp8_e4m3) or fp8_e5m2: keys and values cached in one byte each, twice the "
        "tokens of a 16-bit cache in the same memory (each value rounded to the format).")
    mamba_ssm_cache_dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = Field(
        None, description="Hybrid models (Qwen3.5, Granite 4.0-H, Nemotron-H): the recurrent layers' states; "
        "auto is the model config's choice, else the model's dtype.")
    extra_args: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list, max_length=64,
        description="More `pagoda serve` arguments, appended verbatim.",
        json_schema_extra=_rules(rule(
            f"self.all(a, !({list(flags.MANAGED_FLAGS)}.exists(f, a == f || a.startsWith(f + '='))))",
            "engine.extraArgs must not set " + ", ".join(flags.MANAGED_FLAGS)
            + ": the operator sets them from the resource",
        )))


class AdapterSpec(_Model):
    """A LoRA adapter (a PEFT directory) served beside the model, in the same batches."""

    name: str = Field(
        min_length=1, max_length=128,
        description="Name clients send as the OpenAI `model` to use the adapter.",
        json_schema_extra=_rules(rule(
            f"self.matches('{ADAPTER_NAME_PATTERN}')",
            "adapters[].name must start with a letter or digit and hold only letters, digits, '-', '_' and '.'",
        )),
    )
    source: str = Field(
        max_length=512,
        description="hf://ORG/NAME[@REVISION] (fetched with the model) or pvc://CLAIM[/PATH] (read in place).",
        json_schema_extra=_rules(rule(
            f"self.matches('{SOURCE_PATTERN}')",
            "adapters[].source must be hf://ORG/NAME[@REVISION] or pvc://CLAIM[/PATH]",
        )),
    )


class ScalingPolicy(_Model):
    type: Literal["Pods", "Percent"]
    value: int = Field(ge=1)
    period_seconds: int = Field(ge=1, le=1800)


class ScalingRules(_Model):
    """One direction of the HPA's behavior (autoscaling/v2 HPAScalingRules)."""

    stabilization_window_seconds: int | None = Field(None, ge=0, le=3600)
    select_policy: Literal["Max", "Min", "Disabled"] | None = None
    policies: list[ScalingPolicy] = Field(default_factory=list, max_length=10)


class AutoscalingSpec(_Model):
    """Queue-depth autoscaling: an HPA on the per-pod `pagoda_requests_waiting`."""

    model_config = ConfigDict(json_schema_extra=_rules(
        rule("!has(self.enabled) || !self.enabled || (has(self.minReplicas) && has(self.maxReplicas))",
             "autoscaling.enabled requires both autoscaling.minReplicas and autoscaling.maxReplicas"),
        rule("!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
             "autoscaling.minReplicas must not exceed autoscaling.maxReplicas"),
    ))

    enabled: bool = False
    min_replicas: int | None = Field(
        None, ge=0, le=1000,
        description="0: scaled to zero after scaleToZeroDelaySeconds without requests through `pagoda gateway`, "
                    "and back to one replica by the gateway's next request (the HPA then scales from one).")
    max_replicas: int | None = Field(None, ge=1, le=1000)
    scale_to_zero_delay_seconds: int = Field(
        600, ge=30, le=7 * 86400,
        description="With minReplicas 0: how long without requests before the last replica goes. The gateway "
                    "reports activity every 10 s, in flight included, so a long generation keeps its replica.")
    target_queue_depth: float = Field(
        4.0, description="Average waiting requests per replica the HPA aims for.",
        json_schema_extra=_rules(rule("self > 0.0", "autoscaling.targetQueueDepth must be greater than 0")))
    scale_up: ScalingRules | None = None
    scale_down: ScalingRules | None = None


class ResourcesSpec(_Model):
    """Compute of one engine pod (with engine.nnodes above 1, of each machine's pod of a replica).
    GPUs follow tensorParallelSize / nnodes unless set to 0 (CPU only)."""

    gpus: int | None = Field(
        None, ge=0, description="GPUs per pod: 0 for CPU only; default engine.tensorParallelSize / engine.nnodes.")
    gpu_resource_name: str | None = Field(
        None, max_length=253, description="Extended resource counting GPUs; default from the operator.")
    requests: dict[str, Quantity] = Field(default_factory=dict, max_length=8, description="cpu and memory requests.")
    limits: dict[str, Quantity] = Field(default_factory=dict, max_length=8, description="cpu and memory limits.")


class ModelCacheSpec(_Model):
    """Where hf:// models are downloaded to: a PersistentVolumeClaim shared by replicas."""

    enabled: bool = Field(True, description="false: each pod downloads into its own emptyDir.")
    size: Quantity = "50Gi"
    storage_class_name: str | None = Field(None, max_length=253)
    access_modes: list[Literal["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany", "ReadWriteOncePod"]] = Field(
        default=["ReadWriteOnce"], min_length=1, max_length=4)
    existing_claim: str | None = Field(
        None, max_length=253, description="Use this claim instead of creating one.")
    reclaim_policy: Literal["Delete", "Retain"] = Field(
        "Delete", description="Retain keeps the created claim (and the model) after the resource is deleted.")


class ServiceSpec(_Model):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    port: int = Field(80, ge=1, le=65535)
    annotations: dict[str, str] = Field(default_factory=dict)


class SchedulingSpec(_Model):
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[KubeObject] = Field(default_factory=list)
    affinity: KubeObject | None = None
    priority_class_name: str | None = Field(None, max_length=253)


class LLMDeploymentSpec(_Model):
    """What a platform engineer writes: a model and how to serve it."""

    model_config = ConfigDict(json_schema_extra=_rules(
        rule("!has(self.resources.gpus) || self.resources.gpus == 0 "
             "|| self.resources.gpus * self.engine.nnodes == self.engine.tensorParallelSize",
             "resources.gpus must be 0 (CPU only) or equal engine.tensorParallelSize / engine.nnodes"),
        # Defaults apply before CEL runs, so modelCache.enabled and accessModes are always present here.
        rule("self.engine.nnodes == 1 || !self.modelCache.enabled || self.modelCache.accessModes.exists(m, "
             "m == 'ReadWriteMany') || self.model.source.startsWith('pvc://')",
             "engine.nnodes above 1 needs a model every machine can mount: modelCache.accessModes with "
             "ReadWriteMany, modelCache.enabled false, or a pvc:// model.source"),
        rule("self.engine.nnodes == 1 || !self.autoscaling.enabled || !has(self.autoscaling.minReplicas) "
             "|| self.autoscaling.minReplicas > 0",
             "autoscaling.minReplicas 0 (scale to zero) needs engine.nnodes 1"),
        rule("!has(self.adapters) || !has(self.model.servedName) "
             "|| self.adapters.all(a, a.name != self.model.servedName)",
             "adapters[].name must differ from model.servedName"),
    ))

    model: ModelSpec
    adapters: list[AdapterSpec] = Field(
        default_factory=list, max_length=MAX_ADAPTERS,
        description="LoRA adapters of the model, each served under its own name.",
        json_schema_extra=_rules(rule("self.all(a, self.exists_one(b, b.name == a.name))",
                                      "adapters[].name must be unique")))
    engine: EngineSpec = _nested(EngineSpec)
    image: str | None = Field(None, max_length=512, description="Engine image; default from the operator.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    image_pull_secrets: list[Annotated[str, Field(max_length=253)]] = Field(default_factory=list)
    replicas: int = Field(1, ge=0, le=1000, description="Replicas when autoscaling is disabled.")
    autoscaling: AutoscalingSpec = _nested(AutoscalingSpec)
    resources: ResourcesSpec = _nested(ResourcesSpec)
    model_cache: ModelCacheSpec = _nested(ModelCacheSpec)
    service: ServiceSpec = _nested(ServiceSpec)
    api_key_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret holding the API key clients must send as a Bearer token.")
    scheduling: SchedulingSpec = _nested(SchedulingSpec)
    pod_labels: dict[str, str] = Field(default_factory=dict)
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    env: list[KubeObject] = Field(default_factory=list, description="Extra environment of the engine container.")

    @property
    def served_name(self) -> str:
        """The OpenAI model name: explicit, or ORG/NAME (hf) or the last path element (pvc)."""
        if self.model.served_name:
            return self.model.served_name
        parsed = parse_source(self.model.source)
        return parsed.repo if parsed.scheme == "hf" else (parsed.path.rstrip("/").rsplit("/", 1)[-1] or parsed.claim)

    @property
    def gpus(self) -> int:
        """GPUs per pod: a replica's ranks are spread evenly over its machines."""
        if self.resources.gpus is not None:
            return self.resources.gpus
        return self.engine.tensor_parallel_size // self.engine.nnodes


Phase = Literal["Pending", "Progressing", "Ready", "Degraded"]
ConditionType = Literal["Ready", "ModelCached", "Progressing", "Degraded"]


class Condition(_Model):
    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(max_length=1024)
    message: str = Field("", max_length=32768)
    last_transition_time: str
    observed_generation: int | None = None


class LLMDeploymentStatus(_Model):
    """What the operator observed; written only by the operator."""

    phase: Phase | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    replicas: int | None = Field(None, description="Pods of the engine Deployment.")
    ready_replicas: int | None = None
    desired_replicas: int | None = None
    ready: str | None = Field(None, description="READY/DESIRED, for `kubectl get`.")
    endpoint: str | None = Field(None, description="In-cluster base URL of the OpenAI API.")
    model: str | None = Field(None, description="Served model name.")
    selector: str | None = Field(None, description="Label selector of the pods, for the scale subresource.")
    observed_generation: int | None = None


class LLMDeployment(BaseModel):
    """The parts of a stored `LLMDeployment` that the manifests depend on."""

    name: str
    namespace: str
    uid: str
    generation: int = 0
    spec: LLMDeploymentSpec

    @classmethod
    def from_body(cls, body: Any) -> LLMDeployment:
        """Parses an object as the API server returns it (a dict or kopf's Body)."""
        meta = body["metadata"]
        return cls(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"],
                   generation=meta.get("generation", 0), spec=LLMDeploymentSpec.model_validate(dict(body["spec"])))
