"""What the engine needs to know about a Hugging Face model directory.

config.json files in the wild come in two generations: the classic one
(`rope_theta` and `rope_scaling` at the top level) and the transformers-5 one
(`rope_parameters`). Both are read here, once, so no model file has to care.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pagoda.engine.layers.int_quant import IntQuantConfig
from pagoda.engine.models.bnb_format import bitsandbytes_config
from pagoda.engine.models.mxfp4 import mxfp4_config
from pagoda.engine.models.fp8_formats import Fp8Config, compressed_tensors_fp8_config, fp8_config, is_float_quantized
from pagoda.engine.models.quant_formats import INT_METHODS

_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """Turns a user or config dtype name into a torch dtype, with a clear error."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[str(name).removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unsupported dtype {name!r}; choose one of {sorted(set(_DTYPES))} or 'auto'") from None


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding settings: base, the scaling rule and its parameters."""

    theta: float = 10000.0
    scaling_type: str = "default"
    scaling: dict[str, Any] = field(default_factory=dict)
    partial_rotary_factor: float = 1.0


# quant_method values of config.json's quantization_config that the engine cannot serve yet.
_UNSUPPORTED_QUANT = "bitsandbytes 8-bit, gguf, hqq, compressed-tensors 2:4 sparse or NVFP4"


@dataclass(frozen=True)
class MoEConfig:
    """A mixture-of-experts MLP: which layers route, to how many of how many experts.

    Mixtral calls the expert count `num_local_experts` and always renormalizes the
    chosen experts' weights; Qwen's MoE models say `num_experts` and `norm_topk_prob`,
    and may keep dense MLPs in some layers (`mlp_only_layers`, `decoder_sparse_step`)
    and add an always-on shared expert behind a sigmoid gate (Qwen2-MoE).
    """

    num_experts: int
    top_k: int
    intermediate_size: int
    renormalize: bool
    shared_expert_intermediate_size: int = 0
    sparse_step: int = 1
    dense_layers: tuple[int, ...] = ()
    # DeepSeek's router: scores by `scoring` (softmax or sigmoid), experts in `num_groups` groups of
    # which the best `topk_groups` are searched, a learned bias steering the choice (V3's
    # e_score_correction_bias), the chosen weights times `routed_scaling_factor`.
    scoring: str = "softmax"
    num_groups: int = 1
    topk_groups: int = 1
    score_bias: bool = False
    routed_scaling_factor: float = 1.0
    shared_expert_gated: bool = True  # Qwen2-MoE's sigmoid gate on its shared expert; DeepSeek's has none
    router_fp32: bool = False  # logits from fp32 activations and weights (DeepSeek's reference)

    def is_sparse(self, layer: int) -> bool:
        """Whether `layer` routes to experts (else it has a dense MLP of the model's intermediate_size)."""
        return layer not in self.dense_layers and (layer + 1) % self.sparse_step == 0


@dataclass(frozen=True)
class LinearAttentionConfig:
    """A Gated DeltaNet layer's dimensions (Qwen3.5's and Qwen3-Next's `linear_*` settings)."""

    num_key_heads: int
    num_value_heads: int
    key_head_dim: int
    value_head_dim: int
    conv_kernel: int
    norm_eps: float

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> LinearAttentionConfig:
        return cls(num_key_heads=int(cfg["linear_num_key_heads"]), num_value_heads=int(cfg["linear_num_value_heads"]),
                   key_head_dim=int(cfg["linear_key_head_dim"]), value_head_dim=int(cfg["linear_value_head_dim"]),
                   conv_kernel=int(cfg.get("linear_conv_kernel_dim") or 4), norm_eps=float(cfg.get("rms_norm_eps", 1e-6)))


@dataclass(frozen=True)
class MambaConfig:
    """A Mamba-2 mixer's dimensions, whatever names a family's config.json gives them."""

    num_heads: int
    head_dim: int
    num_groups: int
    state_size: int
    conv_kernel: int
    chunk_size: int
    conv_bias: bool
    proj_bias: bool
    norm_eps: float
    time_step_limit: tuple[float, float] = (0.0, float("inf"))
    # How the scan's output meets its gate z: "gated" RMSNorm(y * silu(z)) (Mamba-2's), "norm_then_gate"
    # RMSNorm(y) * silu(z), or "none": y * silu(z) without a norm (both Falcon-H1's options).
    gate: str = "gated"
    # out_proj's bias where a family sets it apart from in_proj's (Falcon-H1's projectors_bias).
    out_bias: bool | None = None

    @property
    def inner(self) -> int:
        return self.num_heads * self.head_dim


@dataclass(frozen=True)
class MLAConfig:
    """Multi-head latent attention (DeepSeek V2/V3, Kimi K2): keys and values are decompressed from
    one `kv_lora_rank`-wide latent per token plus a `qk_rope_head_dim`-wide rotary key shared by all
    heads; queries come straight from the hidden state or through a `q_lora_rank` bottleneck."""

    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int

    @property
    def latent_dim(self) -> int:
        """What the KV cache holds per token and layer: the latent and the rotated shared key."""
        return self.kv_lora_rank + self.qk_rope_head_dim


@dataclass(frozen=True)
class VisionConfig:
    """The image side of a multimodal model: its vision tower (`tower`: "clip" for LLaVA, "siglip"
    for Gemma 3), which hidden states feed the projector (CLIP's `feature_layer`; "default" drops the
    CLS token, "full" keeps it), and how an image enters the prompt: the `placeholder_id` token a
    prompt writes for it becomes `tokens_per_image` image tokens (`image_token_id`, one per feature),
    between `begin_id` and `end_id` wrapped in blank lines where `wrap_newlines` (Gemma 3's
    "\n\n<start_of_image>...<end_of_image>\n\n"); `bidirectional`: an image's tokens attend to
    one another both ways (Gemma 3).

    Qwen2-VL, Qwen2.5-VL and Qwen3-VL ("qwen2_vl", "qwen2_5_vl", "qwen3_vl" towers) take images at
    their own resolution: `tokens_per_image` is 0, an image's count is its patch grid over
    `spatial_merge`² (2 x 2 patches merge into one feature of `out_hidden_size`); patches span
    `temporal_patch` frames (a still image repeats); Qwen2.5-VL's layers attend within windows of
    `window_size` pixels except the `full_attention_layers`; the language model rotates with three
    positions per token (`mrope`).
    Qwen3-VL adds a learned table of `position_embeddings` positions (a square, resampled to each
    image's grid) and DeepStack: after each of the `deepstack_layers`, one more feature per image
    token, for the language model's first layers (`feature_width`).

    InternVL ("internvl" tower) tiles an image (its processor says how many tiles): each tile's
    `tokens_per_image` features, pixel-shuffled `spatial_merge` x `spatial_merge`, its run wrapped
    in `begin_id` ... `end_id`; its ViT's layers norm as `norm` says, with q/k/v biases where
    `attention_bias`, q/k norms where `qk_norm`, and a final norm where `final_norm`.

    Pixtral (Mistral 3, "pixtral" tower) reads an image at its own size in patches of `patch_size`,
    merged `spatial_merge` x `spatial_merge` into features; each row of features in the image's run
    is followed by `row_break_id` ([IMG_BREAK]), the last by `last_break_id` ([IMG_END]); its 2-D
    rotary turns at `rope_theta`.

    Gemma 4 ("gemma4" tower) reads an image at its own aspect ratio, in at most its processor's
    `max_soft_tokens` features: patches of `patch_size` pooled `spatial_merge` x `spatial_merge` into one
    feature each (a learned table of `position_embeddings` columns and rows; 2-D rotary at `rope_theta`);
    the run is wrapped in `begin_id` ... `end_id`, and attends both ways in the sliding layers only."""

    tower: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    image_size: int
    patch_size: int
    layer_norm_eps: float
    hidden_act: str
    tokens_per_image: int
    image_token_id: int
    placeholder_id: int
    feature_layer: int = -1
    select_strategy: str = "full"
    projector_act: str = "gelu"
    projector_bias: bool = True
    begin_id: int | None = None
    end_id: int | None = None
    wrap_newlines: bool = False
    bidirectional: bool = False
    spatial_merge: int = 1
    temporal_patch: int = 1
    window_size: int = 0
    full_attention_layers: tuple[int, ...] = ()
    out_hidden_size: int = 0
    mrope: bool = False
    position_embeddings: int = 0
    deepstack_layers: tuple[int, ...] = ()
    norm: str = "layer_norm"
    attention_bias: bool = True
    qk_norm: bool = False
    final_norm: bool = True
    row_break_id: int | None = None
    last_break_id: int | None = None
    rope_theta: float = 10000.0
    # Gemma 4 ("gemma4" tower): heads of `head_dim` with `kv_heads` KV heads; projections clamped to the
    # checkpoint's bounds where `clipped`; pooled features shifted and scaled where `standardize`.
    head_dim: int = 0
    kv_heads: int = 0
    clipped: bool = False
    standardize: bool = False

    def feature_width(self, text_hidden: int) -> int:
        """The width of an image token's features: the language model's, once more per DeepStack layer."""
        return text_hidden * (1 + len(self.deepstack_layers))

    @property
    def layers_run(self) -> int:
        """Encoder layers up to the feature layer (hidden state k is the output of k layers; -1 the last)."""
        return self.feature_layer if self.feature_layer >= 0 else self.num_layers + 1 + self.feature_layer


@dataclass(frozen=True)
class ModelConfig:
    """The architecture-level facts of one model directory."""

    path: Path
    architecture: str
    hf_config: dict[str, Any]
    dtype: torch.dtype
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    max_model_len: int
    rope: RopeConfig
    tie_word_embeddings: bool
    attention_bias: bool
    sliding_window: int | None
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    moe: MoEConfig | None = None
    quantization: Fp8Config | IntQuantConfig | None = None
    mla: MLAConfig | None = None
    vision: VisionConfig | None = None  # models that take images (LLaVA)
    # A bidirectional encoder (BERT, XLM-RoBERTa): every prompt token sees the whole prompt, so a prompt
    # runs in one step, is never served from the prefix cache, and generates nothing.
    encoder: bool = False

    @property
    def longrope_original(self) -> int | None:
        """LongRoPE's original context (Phi-3/3.5/4-mini), None under other rotary rules. As transformers
        does, a forward pass over positions past it rotates with the long factors: a sequence whose
        prompt is longer uses them for every token (`rotates_long`), a shorter one from that position on."""
        return int(self.rope.scaling["original_max_position_embeddings"]) if self.rope.scaling_type in LONGROPE else None

    def rotates_long(self, num_prompt_tokens: int) -> bool:
        """Whether every token of a sequence with this many prompt tokens rotates with LongRoPE's long factors."""
        original = self.longrope_original
        return original is not None and num_prompt_tokens > original

    @property
    def kv_planes(self) -> int:
        """Tensors the KV cache keeps per layer: K and V, or with latent attention the one latent,
        which is both (see engine/models/deepseek.py)."""
        return 1 if self.mla is not None else 2


# Rope scaling types of LongRoPE ("su" is its older name in Phi-3 configs).
LONGROPE = ("longrope", "su")


def _rope_config(cfg: dict[str, Any]) -> RopeConfig:
    params = dict(cfg.get("rope_parameters") or {})
    # Models whose layers rotate differently (Gemma 3) nest the settings per layer type; the
    # global layers' are the model's, and the model reads the others itself.
    params = dict(params.get("full_attention", params))
    scaling = dict(cfg.get("rope_scaling") or {})
    merged = {**scaling, **params}
    theta = merged.pop("rope_theta", None)  # None also where a NoPE model names none (OLMo Hybrid)
    theta = float(theta if theta is not None else cfg.get("rope_theta") or 10000.0)
    kind = merged.pop("rope_type", None) or merged.pop("type", None) or "default"
    merged.pop("type", None)
    if kind == "mrope":  # Qwen2-VL's older spelling: plain frequencies, `mrope_section` (kept) splits them
        kind = "default"
    partial = merged.pop("partial_rotary_factor", cfg.get("partial_rotary_factor"))
    if partial is None and cfg.get("rotary_dim") and cfg.get("head_dim"):  # MiniMax-M2's hub configs
        partial = int(cfg["rotary_dim"]) / int(cfg["head_dim"])
    partial = float(partial if partial is not None else 1.0)
    if kind in LONGROPE and "original_max_position_embeddings" not in merged:
        merged["original_max_position_embeddings"] = cfg["original_max_position_embeddings"]  # Phi-3 keeps it apart
    if kind == "yarn" and "original_max_position_embeddings" not in merged:
        merged["original_max_position_embeddings"] = cfg.get("original_max_position_embeddings",
                                                             cfg.get("max_position_embeddings"))
    return RopeConfig(theta=theta, scaling_type=str(kind), scaling=merged, partial_rotary_factor=partial)


def sliding_rope(hf: dict[str, Any]) -> RopeConfig | None:
    """The sliding-window layers' own rotary settings, where `rope_parameters` nests them per layer
    type (Gemma 3, OLMo 3); None where every layer rotates alike."""
    nested = (hf.get("rope_parameters") or {}).get("sliding_attention")
    return _rope_config({**hf, "rope_parameters": nested, "rope_scaling": None}) if nested else None


# Each family's config.json names for MambaConfig's fields (Granite 4.0-H and Bamba; Nemotron-H;
# Mamba-2 itself), with transformers' defaults.
_MAMBA_NAMES = {
    "mamba_n_heads": dict(num_heads="mamba_n_heads", head_dim="mamba_d_head", num_groups=("mamba_n_groups", 1),
                          state_size=("mamba_d_state", 256), conv_kernel=("mamba_d_conv", 4),
                          chunk_size=("mamba_chunk_size", 256), conv_bias=("mamba_conv_bias", True),
                          proj_bias=("mamba_proj_bias", False), expand=("mamba_expand", 2), norm_eps="rms_norm_eps"),
    "mamba_num_heads": dict(num_heads="mamba_num_heads", head_dim="mamba_head_dim", num_groups=("n_groups", 8),
                            state_size=("ssm_state_size", 128), conv_kernel=("conv_kernel", 4),
                            chunk_size=("chunk_size", 128), conv_bias=("use_conv_bias", True),
                            proj_bias=("mamba_proj_bias", False), expand=("expand", 2), norm_eps="layer_norm_epsilon"),
    "state_size": dict(num_heads="num_heads", head_dim="head_dim", num_groups=("n_groups", 8),
                       state_size=("state_size", 128), conv_kernel=("conv_kernel", 4), chunk_size=("chunk_size", 256),
                       conv_bias=("use_conv_bias", True), proj_bias=("use_bias", False), expand=("expand", 2),
                       norm_eps="layer_norm_epsilon"),
}


def mamba_config(cfg: dict[str, Any]) -> MambaConfig:
    """A Mamba-2 mixer's settings from a Granite 4.0-H, Bamba, Nemotron-H or Mamba-2 config."""
    key = next((k for k in _MAMBA_NAMES if k in cfg), None)
    if key is None:
        raise ValueError("config.json names no Mamba-2 mixer settings (mamba_n_heads, mamba_num_heads or state_size)")
    names = _MAMBA_NAMES[key]

    def read(field: str) -> Any:
        name, default = names[field] if isinstance(names[field], tuple) else (names[field], None)
        value = cfg.get(name)
        return default if value is None else value

    num_heads = int(read("num_heads"))
    head_dim = read("head_dim")
    if head_dim in (None, "auto"):  # Falcon-H1 sizes the mixer by mamba_d_ssm, the others by expand
        head_dim = int(cfg.get("mamba_d_ssm") or int(read("expand")) * int(cfg["hidden_size"])) // num_heads
    gate = "gated"
    if cfg.get("mamba_rms_norm") is False:  # Falcon-H1's options
        gate = "none"
    elif cfg.get("mamba_norm_before_gate"):
        gate = "norm_then_gate"
    # transformers writes an infinite limit as {"__float__": "Infinity"}; hub configs as JSON's Infinity.
    limit = [float(v["__float__"]) if isinstance(v, dict) else float(v)
             for v in cfg.get("time_step_limit") or (0.0, float("inf"))]
    return MambaConfig(num_heads=num_heads, head_dim=int(head_dim), num_groups=int(read("num_groups")),
                       state_size=int(read("state_size")), conv_kernel=int(read("conv_kernel")),
                       chunk_size=int(read("chunk_size")), conv_bias=bool(read("conv_bias")),
                       proj_bias=bool(read("proj_bias")), norm_eps=float(read("norm_eps") or 1e-5),
                       time_step_limit=(limit[0], limit[1]), gate=gate,
                       out_bias=bool(cfg["projectors_bias"]) if "projectors_bias" in cfg else None)


def _mla_config(cfg: dict[str, Any]) -> MLAConfig | None:
    """The latent-attention settings of a DeepSeek-style config, or None."""
    if not cfg.get("kv_lora_rank"):
        return None
    q_lora = cfg.get("q_lora_rank")
    return MLAConfig(q_lora_rank=int(q_lora) if q_lora else None, kv_lora_rank=int(cfg["kv_lora_rank"]),
                     qk_nope_head_dim=int(cfg["qk_nope_head_dim"]), qk_rope_head_dim=int(cfg["qk_rope_head_dim"]),
                     v_head_dim=int(cfg["v_head_dim"]))


# DeepSeek's routing rules (config.json's topk_method) and what each reads.
_TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")
# Families whose configs may leave the rule out (transformers writes none) and mean V3's.
_NOAUX_TC_MODELS = ("deepseek_v3", "glm4_moe", "glm4_moe_lite", "mimo_v2_flash", "dots1", "exaone_moe",
                    "kimi_linear")


def _routing(cfg: dict[str, Any], num_experts: int) -> dict[str, Any]:
    """MoEConfig's router fields of a DeepSeek-style config (first_k_dense_replace marks one, or the family);
    its dense MLPs as `mlp_layer_types` lists them where it does (GLM-4.7-Flash, Kimi Linear: transformers
    gives the list precedence), else the first `first_k_dense_replace`; ValueError for a routing rule the
    engine does not know."""
    if "first_k_dense_replace" not in cfg and cfg.get("model_type") not in _NOAUX_TC_MODELS:
        return {}
    method = cfg.get("topk_method") or ("noaux_tc" if cfg.get("model_type") in _NOAUX_TC_MODELS else "greedy")
    scoring = cfg.get("scoring_func") or ("sigmoid" if method == "noaux_tc" else "softmax")
    if method not in _TOPK_METHODS or scoring not in ("softmax", "sigmoid"):
        raise ValueError(f"MoE routing topk_method={method!r} scoring_func={scoring!r} is not supported "
                         f"(supported: topk_method {', '.join(_TOPK_METHODS)}; scoring_func softmax, sigmoid)")
    grouped = method != "greedy"
    groups = int(cfg.get("n_group") or 1) if grouped else 1
    if num_experts % groups:
        raise ValueError(f"n_group {groups} does not divide the {num_experts} experts")
    layers = int(cfg["num_hidden_layers"])
    if cfg.get("mlp_layer_types"):
        dense = tuple(i for i, kind in enumerate(cfg["mlp_layer_types"]) if kind == "dense")
    else:
        moe_layers = range(int(cfg.get("first_k_dense_replace") or 0), layers)
        freq = max(1, int(cfg.get("moe_layer_freq") or 1))
        dense = tuple(i for i in range(layers) if i not in moe_layers or i % freq)
    return dict(
        scoring=scoring, num_groups=groups, topk_groups=int(cfg.get("topk_group") or 1) if grouped else 1,
        score_bias=method == "noaux_tc", routed_scaling_factor=float(cfg.get("routed_scaling_factor") or 1.0),
        shared_expert_gated=False, router_fp32=True, dense_layers=dense,
    )


def _moe_config(cfg: dict[str, Any]) -> MoEConfig | None:
    """The mixture-of-experts settings, or None for a dense model."""
    num_experts = int(cfg.get("num_experts") or cfg.get("num_local_experts") or cfg.get("n_routed_experts")
                      or cfg.get("moe_num_experts") or 0)
    if num_experts == 0:
        return None
    # Gemma 4's, ERNIE 4.5's and Hunyuan's names after the usual one.
    top_k = int(cfg.get("num_experts_per_tok") or cfg.get("top_k_experts") or cfg.get("moe_k") or cfg.get("moe_topk") or 0)
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"num_experts_per_tok must be in 1..{num_experts} (the experts), got {top_k}")
    renormalize = cfg.get("norm_topk_prob")
    expert_size = int(cfg.get("moe_intermediate_size") or cfg["intermediate_size"])
    shared = int(cfg.get("shared_expert_intermediate_size") or 0) or expert_size * int(
        cfg.get("n_shared_experts") or cfg.get("moe_num_shared_experts") or cfg.get("num_shared_experts") or 0)
    # Granite 4.0's shared MLP: an always-on expert without a gate.
    ungated = int(cfg.get("shared_intermediate_size") or 0)
    fields: dict[str, Any] = dict(
        num_experts=num_experts,
        top_k=top_k,
        intermediate_size=expert_size,
        renormalize=True if renormalize is None else bool(renormalize),
        shared_expert_intermediate_size=shared or ungated,
        shared_expert_gated=not ungated,
        sparse_step=max(1, int(cfg.get("decoder_sparse_step") or 1)),
        dense_layers=tuple(int(i) for i in cfg.get("mlp_only_layers") or ()),
    )
    if cfg.get("model_type") == "hunyuan_v1_moe":  # an ungated shared MLP as wide as the experts; fp32 router
        fields.update(shared_expert_intermediate_size=expert_size, shared_expert_gated=False, router_fp32=True)
    if cfg.get("model_type") == "ernie4_5_moe":  # softmax scores steered by a bias; experts every interval-th layer
        layers = int(cfg["num_hidden_layers"])
        start, interval = int(cfg.get("moe_layer_start_index", 1)), int(cfg.get("moe_layer_interval") or 1)
        end = int(cfg.get("moe_layer_end_index", -1))
        end = layers - 1 if end == -1 else end
        fields.update(score_bias=True, router_fp32=True, shared_expert_gated=False,
                      dense_layers=tuple(i for i in range(layers) if (i + 1) % interval or not start <= i <= end))
    if cfg.get("model_type") == "minimax_m2":  # MiniMax-M2: sigmoid scores steered by a correction bias
        fields.update(scoring="sigmoid", score_bias=bool(cfg.get("use_routing_bias", True)))
    if "use_expert_bias" in cfg:  # LFM2-MoE: sigmoid scores steered by an expert bias, dense first layers
        fields.update(scoring="sigmoid", score_bias=bool(cfg["use_expert_bias"]),
                      routed_scaling_factor=float(cfg.get("routed_scaling_factor") or 1.0),
                      dense_layers=tuple(range(int(cfg.get("num_dense_layers") or 0))))
    return MoEConfig(**{**fields, **_routing(cfg, num_experts)})


def _quantization(cfg: dict[str, Any]) -> Fp8Config | IntQuantConfig | None:
    """The checkpoint's weight quantization; ValueError for what cannot be served (rather than
    loading packed integers or FP8 bytes as if they were weights)."""
    quant = cfg.get("quantization_config")
    if not quant:
        return None
    method = str(quant.get("quant_method", "(none given)"))
    if method == "fp8":
        return fp8_config(quant)
    if method == "compressed-tensors" and not quant.get("config_groups"):
        return None  # only a kv_cache_scheme: full-precision weights, KV-cache scales (read by the loader)
    if method == "compressed-tensors" and is_float_quantized(quant):
        return compressed_tensors_fp8_config(quant)
    if method in INT_METHODS:
        return INT_METHODS[method](quant)
    if method == "bitsandbytes":
        return bitsandbytes_config(quant)
    if method == "mxfp4":
        return mxfp4_config(quant)
    raise ValueError(f"quantization {method!r} is not supported (supported: fp8 (block-wise, per-channel or "
                     f"per-tensor), 4- and 8-bit weight-only gptq and awq, compressed-tensors pack-quantized and "
                     f"float-quantized, bitsandbytes 4-bit, mxfp4 experts; not yet: {_UNSUPPORTED_QUANT})")


# Models whose every layer is recurrent (no attention, no KV cache, no position limit).
RECURRENT_ARCHITECTURES = ("Mamba2ForCausalLM",)

# Bidirectional encoders (embedding models and cross-encoders), and the RoBERTa family among them, whose
# positions start past the padding index.
ENCODER_ARCHITECTURES = ("BertModel", "RobertaModel", "XLMRobertaModel", "BertForSequenceClassification",
                         "XLMRobertaForSequenceClassification")
ROBERTA_ARCHITECTURES = ("RobertaModel", "XLMRobertaModel", "XLMRobertaForSequenceClassification")


def roberta_position_offset(cfg: dict[str, Any], architecture: str) -> int:
    """How far past a token's index its position embedding is: RoBERTa's count from padding_idx + 1."""
    return int(cfg.get("pad_token_id", 1)) + 1 if architecture in ROBERTA_ARCHITECTURES else 0


# Multimodal architectures whose image inputs are served.
QWEN_VL_ARCHITECTURES = ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration",
                         "Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration",
                         "Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration")
IMAGE_ARCHITECTURES = ("LlavaForConditionalGeneration", "Gemma3ForConditionalGeneration", *QWEN_VL_ARCHITECTURES,
                       "InternVLForConditionalGeneration", "Mistral3ForConditionalGeneration",
                       "Gemma4ForConditionalGeneration")


def _qwen_vl_vision(full: Any, architecture: str) -> VisionConfig:
    """Qwen2-VL's, Qwen2.5-VL's and Qwen3-VL's vision settings (their towers name the same facts differently)."""
    vision = full.vision_config
    window, full_layers, table, deepstack = 0, (), 0, ()
    if architecture == "Qwen2VLForConditionalGeneration":
        width, ffn, out = vision.embed_dim, int(vision.embed_dim * vision.mlp_ratio), vision.hidden_size
        tower = "qwen2_vl"
    else:
        width, ffn, out = vision.hidden_size, vision.intermediate_size, vision.out_hidden_size
        tower = "qwen2_5_vl" if architecture == "Qwen2_5_VLForConditionalGeneration" else "qwen3_vl"
    if tower == "qwen2_5_vl":
        window, full_layers = vision.window_size, tuple(vision.fullatt_block_indexes)
    if tower == "qwen3_vl":
        # Qwen3.5's tower is Qwen3-VL's without DeepStack.
        table, deepstack = vision.num_position_embeddings, tuple(getattr(vision, "deepstack_visual_indexes", ()) or ())
    token = int(full.image_token_id)
    return VisionConfig(
        tower=tower, hidden_size=width, intermediate_size=ffn, num_layers=vision.depth, num_heads=vision.num_heads,
        image_size=0, patch_size=vision.patch_size, layer_norm_eps=1e-6, hidden_act=vision.hidden_act,
        tokens_per_image=0, image_token_id=token, placeholder_id=token, spatial_merge=vision.spatial_merge_size,
        temporal_patch=vision.temporal_patch_size, window_size=window, full_attention_layers=full_layers,
        out_hidden_size=out, mrope=True, position_embeddings=table, deepstack_layers=deepstack,
    )


def _vision_config(path: Path, architecture: str) -> VisionConfig | None:
    """A multimodal checkpoint's vision settings, with transformers' defaults for what config.json leaves out."""
    from transformers import AutoConfig

    full = AutoConfig.from_pretrained(str(path))
    if architecture == "Gemma4ForConditionalGeneration":
        return _gemma4_vision(full)
    vision = full.vision_config
    if architecture in QWEN_VL_ARCHITECTURES:
        return _qwen_vl_vision(full, architecture)
    if architecture == "InternVLForConditionalGeneration":
        return _internvl_vision(full, path)
    if architecture == "Mistral3ForConditionalGeneration":
        return _pixtral_vision(full, path)
    tower = dict(hidden_size=vision.hidden_size, intermediate_size=vision.intermediate_size,
                 num_layers=vision.num_hidden_layers, num_heads=vision.num_attention_heads,
                 image_size=vision.image_size, patch_size=vision.patch_size, layer_norm_eps=vision.layer_norm_eps,
                 hidden_act=vision.hidden_act)
    patches = (vision.image_size // vision.patch_size) ** 2
    if architecture == "Gemma3ForConditionalGeneration":
        tokens, side = int(full.mm_tokens_per_image), int(full.mm_tokens_per_image**0.5)
        if vision.model_type != "siglip_vision_model" or side * side != tokens or patches % tokens:
            raise ValueError(f"Gemma 3 with a {vision.model_type} tower and {tokens} tokens per image is not supported")
        return VisionConfig(tower="siglip", **tower, tokens_per_image=tokens, image_token_id=int(full.image_token_index),
                            placeholder_id=int(full.boi_token_index), begin_id=int(full.boi_token_index),
                            end_id=int(full.eoi_token_index), wrap_newlines=True, bidirectional=True)
    layer, strategy = full.vision_feature_layer, full.vision_feature_select_strategy
    if vision.model_type != "clip_vision_model" or not isinstance(layer, int) or strategy not in ("default", "full"):
        raise ValueError(f"LLaVA with a {vision.model_type} vision tower, feature layer {layer} and strategy "
                         f"{strategy!r} is not supported (supported: a CLIP tower, one feature layer)")
    return VisionConfig(
        tower="clip", **tower, tokens_per_image=patches + (strategy == "full"),
        image_token_id=int(full.image_token_id), placeholder_id=int(full.image_token_id),
        feature_layer=layer, select_strategy=strategy, projector_act=full.projector_hidden_act,
        projector_bias=bool(getattr(full, "multimodal_projector_bias", True)),
    )


def _token_ids(path: Path, *tokens: str) -> list[int]:
    """The ids of special tokens a multimodal model's runs use, from its tokenizer.json."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    ids = [tokenizer.token_to_id(token) for token in tokens]
    if None in ids:
        raise ValueError(f"the tokenizer must hold the image tokens {', '.join(tokens)}")
    return ids


def _gemma4_vision(full: Any) -> VisionConfig | None:
    """Gemma 4's vision settings; None for a checkpoint without a vision tower (served as text)."""
    vision = full.vision_config
    if vision is None:
        return None
    text = full.get_text_config()
    if text.use_bidirectional_attention not in (None, "vision"):
        raise ValueError(f"Gemma 4 with use_bidirectional_attention={text.use_bidirectional_attention!r} is not supported")
    rope = vision.rope_parameters or {}
    if rope.get("rope_type", "axial") != "axial":
        raise ValueError(f"Gemma 4's vision tower with rope {rope.get('rope_type')!r} is not supported (supported: axial)")
    token = int(full.image_token_id)
    return VisionConfig(
        tower="gemma4", hidden_size=vision.hidden_size, intermediate_size=vision.intermediate_size,
        num_layers=vision.num_hidden_layers, num_heads=vision.num_attention_heads, image_size=0,
        patch_size=vision.patch_size, layer_norm_eps=vision.rms_norm_eps, hidden_act=vision.hidden_activation,
        tokens_per_image=0, image_token_id=token, placeholder_id=token, begin_id=int(full.boi_token_id),
        end_id=int(full.eoi_token_id), bidirectional=text.use_bidirectional_attention == "vision",
        spatial_merge=vision.pooling_kernel_size, position_embeddings=vision.position_embedding_size,
        rope_theta=float(rope.get("rope_theta", vision.default_theta)), head_dim=vision.head_dim,
        kv_heads=vision.num_key_value_heads, clipped=bool(vision.use_clipped_linears),
        standardize=bool(vision.standardize),
    )


def _pixtral_vision(full: Any, path: Path) -> VisionConfig:
    """Mistral 3's Pixtral settings; the break tokens of an image's rows come from its tokenizer."""
    vision = full.vision_config
    if full.vision_feature_layer != -1:
        raise ValueError(f"Mistral 3 with feature layer {full.vision_feature_layer} is not supported (supported: -1)")
    row_break, last_break = _token_ids(path, "[IMG_BREAK]", "[IMG_END]")
    token = int(full.image_token_index)
    return VisionConfig(
        tower="pixtral", hidden_size=vision.hidden_size, intermediate_size=vision.intermediate_size,
        num_layers=vision.num_hidden_layers, num_heads=vision.num_attention_heads, image_size=vision.image_size,
        patch_size=vision.patch_size, layer_norm_eps=1e-5, hidden_act=vision.hidden_act, tokens_per_image=0,
        image_token_id=token, placeholder_id=token, projector_act=full.projector_hidden_act,
        projector_bias=bool(full.multimodal_projector_bias), spatial_merge=full.spatial_merge_size,
        row_break_id=row_break, last_break_id=last_break,
        rope_theta=float((vision.rope_parameters or {}).get("rope_theta", 10000.0)),
    )


def _internvl_vision(full: Any, path: Path) -> VisionConfig:
    """InternVL's vision settings; the <img> and </img> tokens around an image's run come from its tokenizer."""
    vision = full.vision_config
    side, patch = vision.image_size[0], vision.patch_size[0]
    merge = round(1 / full.downsample_ratio)
    layer, strategy = full.vision_feature_layer, full.vision_feature_select_strategy
    if vision.image_size[0] != vision.image_size[1] or not isinstance(layer, int) or strategy != "default" \
            or (side // patch) % merge:
        raise ValueError(f"InternVL with {vision.image_size} tiles, feature layer {layer} and strategy {strategy!r} "
                         "is not supported (supported: square tiles, one feature layer, the class token dropped)")
    begin, end = _token_ids(path, "<img>", "</img>")
    token = int(full.image_token_id)
    return VisionConfig(
        tower="internvl", hidden_size=vision.hidden_size, intermediate_size=vision.intermediate_size,
        num_layers=vision.num_hidden_layers, num_heads=vision.num_attention_heads, image_size=side, patch_size=patch,
        layer_norm_eps=vision.layer_norm_eps, hidden_act=vision.hidden_act,
        tokens_per_image=(side // patch // merge) ** 2, image_token_id=token, placeholder_id=token, begin_id=begin,
        end_id=end, feature_layer=layer, select_strategy=strategy, projector_act=full.projector_hidden_act,
        spatial_merge=merge, norm=vision.norm_type, attention_bias=vision.attention_bias, qk_norm=vision.use_qk_norm,
        final_norm=not vision.use_mean_pooling,
    )


def _text_config(path: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """A multimodal checkpoint's language-model settings, which the engine serves (as text), with
    transformers' defaults filled in: hub configs (Gemma 3 4B and up) leave most of them out."""
    from transformers import AutoConfig

    text = AutoConfig.from_pretrained(str(path)).get_text_config().to_dict()
    dtype = cfg.get("torch_dtype") or cfg.get("dtype") or text.get("torch_dtype") or text.get("dtype")
    return {**text, "architectures": cfg.get("architectures"), "torch_dtype": dtype,
            "tie_word_embeddings": cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", False))}


# Kimi Linear's config.json names (its own, which transformers keeps) -> the names the engine reads.
_KIMI_LINEAR_NAMES = {"num_experts": "num_local_experts", "num_experts_per_token": "num_experts_per_tok",
                      "num_shared_experts": "n_shared_experts", "num_expert_group": "n_group",
                      "moe_renormalize": "norm_topk_prob", "model_max_length": "max_position_embeddings"}


def _kimi_linear_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Kimi Linear's config in the engine's names: its MoE and context keys renamed, and the hub's
    `linear_attn_config` (1-based `kda_layers` / `full_attn_layers`, the KDA heads) read into
    `layer_types` and the `linear_*` keys; dense MLPs before `first_k_dense_replace` (default 1)."""
    cfg = {_KIMI_LINEAR_NAMES.get(key, key): value for key, value in cfg.items()}
    linear = cfg.get("linear_attn_config") or {}
    layers = int(cfg["num_hidden_layers"])
    if not cfg.get("layer_types") and "kda_layers" in linear:
        full = {int(i) - 1 for i in linear.get("full_attn_layers") or ()}
        cfg["layer_types"] = ["full_attention" if i in full else "linear_attention" for i in range(layers)]
    for ours, theirs in (("linear_num_heads", "num_heads"), ("linear_head_dim", "head_dim"),
                         ("linear_conv_kernel_dim", "short_conv_kernel_size")):
        if ours not in cfg and theirs in linear:
            cfg[ours] = linear[theirs]
    if not cfg.get("mlp_layer_types"):
        dense = int(cfg.get("first_k_dense_replace") or 1)
        cfg["mlp_layer_types"] = ["dense" if i < dense else "sparse" for i in range(layers)]
    return cfg


def _eos_ids(path: Path, cfg: dict[str, Any]) -> tuple[int, ...]:
    """EOS ids come from generation_config.json first (it lists every stop id), then config.json."""
    ids: list[int] = []
    gen_path = path / "generation_config.json"
    sources = [cfg]
    if gen_path.exists():
        sources.insert(0, json.loads(gen_path.read_text()))
    for src in sources:
        eos = src.get("eos_token_id")
        if eos is None:
            continue
        for tok in eos if isinstance(eos, list) else [eos]:
            if tok not in ids:
                ids.append(int(tok))
    return tuple(ids)


def load_model_config(
    model: str | Path, dtype: str | torch.dtype = "auto", max_model_len: int | None = None
) -> ModelConfig:
    """Reads config.json of a model directory; refuses what the engine cannot serve."""
    path = Path(model)
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{path} is not a model directory: no config.json")
    cfg = json.loads(cfg_path.read_text())
    if "text_config" in cfg:
        cfg = _text_config(path, cfg)
    if cfg.get("model_type") == "kimi_linear":
        cfg = _kimi_linear_config(cfg)
    archs = cfg.get("architectures") or []
    from pagoda.engine.models.registry import resolve_architecture

    architecture = resolve_architecture(archs)
    if dtype == "auto":
        torch_dtype = parse_dtype(cfg.get("torch_dtype") or cfg.get("dtype") or "float32")
    else:
        torch_dtype = parse_dtype(dtype)
    # A model without attention (Mamba-2) has no heads and no position limit: its context defaults to
    # 2048 tokens (vLLM's default where a config names no limit) and may be set to any length.
    num_heads = int(cfg.get("num_attention_heads") or 1)
    hidden = int(cfg["hidden_size"])
    unbounded = cfg.get("max_position_embeddings") is None and architecture in RECURRENT_ARCHITECTURES
    max_pos = int(cfg.get("max_position_embeddings") or 2048) - roberta_position_offset(cfg, architecture)
    rope = _rope_config(cfg)
    if max_model_len is None:
        max_model_len = max_pos
    elif max_model_len < 1:
        raise ValueError(f"max_model_len must be positive, got {max_model_len}")
    elif max_model_len > max_pos and unbounded:
        max_pos = max_model_len
    elif max_model_len > max_pos:
        raise ValueError(
            f"max_model_len {max_model_len} exceeds the model's max_position_embeddings {max_pos}"
        )
    sliding = cfg.get("sliding_window")
    if cfg.get("use_sliding_window") is False:
        sliding = None
    mla = _mla_config(cfg)
    vision = _vision_config(path, architecture) if architecture in IMAGE_ARCHITECTURES else None
    return ModelConfig(
        path=path,
        architecture=architecture,
        hf_config=cfg,
        dtype=torch_dtype,
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(cfg.get("intermediate_size") or cfg.get("block_ff_dim") or 0),
        # Nemotron-H's configs as transformers 5 writes them count the layers only by listing them.
        num_layers=int(cfg.get("num_hidden_layers") or len(cfg.get("layers_block_type") or ())),
        num_heads=num_heads,
        # Latent attention caches one latent per token, shared by every head: a single "KV head" as wide as it.
        num_kv_heads=1 if mla else int(cfg.get("num_key_value_heads") or num_heads),
        head_dim=mla.latent_dim if mla else int(cfg.get("head_dim") or hidden // num_heads),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=max_pos,
        max_model_len=max_model_len,
        rope=rope,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", cfg.get("tie_embedding", False))),
        attention_bias=bool(cfg.get("attention_bias", False)),
        sliding_window=int(sliding) if sliding else None,
        eos_token_ids=_eos_ids(path, cfg),
        bos_token_id=cfg.get("bos_token_id"),
        moe=_moe_config(cfg),
        quantization=_quantization(cfg),
        mla=mla,
        vision=vision,
        encoder=architecture in ENCODER_ARCHITECTURES,
    )
