"""Mixture-of-experts members of the decoder family: Mixtral, Qwen2-MoE (Qwen1.5-MoE), Qwen3-MoE, OLMoE,
Granite MoE and GLM-4.5 (DeepSeek's, with latent attention, are in deepseek.py).

Attention is their dense sibling's (Mistral, Qwen2, Qwen3); the MLP of each
sparse layer becomes a router choosing `top_k` of E SwiGLU experts per token,
run by the fused grouped-GEMM kernel, plus, in Qwen2-MoE, an always-on shared
expert scaled by a sigmoid gate. Layers listed in `mlp_only_layers` (or off the
`decoder_sparse_step`) keep a dense MLP.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from pagoda.engine.distributed import all_reduce
from pagoda.engine.layers.linear import ReplicatedLinear
from pagoda.engine.layers.moe import EXPERT_PARTS, STACKED, FusedMoE, route
from pagoda.engine.layers.weights import copy_into, read_full
from pagoda.engine.model_config import ModelConfig
from pagoda.engine.models.llama import (DecoderAttention, DecoderMLP, Ernie45ForCausalLM, GraniteForCausalLM,
                                        HunYuanDenseV1ForCausalLM, LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM,
                                        layer_attention)
from pagoda.engine.models.olmo2 import exaone_layer_types

# experts.<e>.<projection>.weight (and .weight_scale_inv of FP8 checkpoints, or the integer layout's
# qweight, scales and zeros): one expert's part, under the layer's `mlp` (Nemotron-H: `mixer`).
_EXPERT = re.compile(r"^(?P<layer>.*\.(?:mlp|mixer)\.experts)\.(?P<expert>\d+)\.(?P<part>\w+)"
                     r"\.(?P<leaf>weight|weight_scale_inv|qweight|scales|zeros|g_idx)$")
# Our parameter suffix of each checkpoint leaf (w13<suffix> or w2<suffix>).
_EXPERT_LEAVES = {"weight": "", "weight_scale_inv": "_scale_inv", "qweight": "_qweight", "scales": "_scales",
                  "zeros": "_zeros", "g_idx": "_g_idx"}
# experts.gate_up_proj / experts.down_proj, all experts stacked (transformers 5's layout).
_STACKED = re.compile(r"^(?P<layer>.*\.mlp\.experts)\.(?P<part>gate_up_proj|down_proj)$")


class Router(ReplicatedLinear):
    """Expert logits, in fp32 where the family computes them so (`fp32`: DeepSeek), with DeepSeek V3's
    `e_score_correction_bias` (fp32 in checkpoints too) where its routing uses one."""

    def __init__(self, hidden_size: int, num_experts: int, score_bias: bool, fp32: bool) -> None:
        super().__init__(hidden_size, num_experts)
        self.fp32 = fp32
        self.e_score_correction_bias = (nn.Parameter(torch.empty(num_experts, dtype=torch.float32), requires_grad=False)
                                        if score_bias else None)
        if score_bias:  # ERNIE 4.5 stores it [1, experts]
            self.e_score_correction_bias.weight_loader = self._load_bias

    @staticmethod
    def _load_bias(param: nn.Parameter, src: Any) -> None:
        copy_into(param, read_full(src).reshape(param.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x.float(), self.weight.float()) if self.fp32 else super().forward(x)


class SparseMoeBlock(nn.Module):
    """Router + routed experts (+ shared expert, gated in Qwen2-MoE); one all-reduce for all of it."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        moe = cfg.moe
        assert moe is not None
        self.moe = moe
        self.gate = Router(cfg.hidden_size, moe.num_experts, moe.score_bias, moe.router_fp32)
        self.experts = FusedMoE(moe.num_experts, cfg.hidden_size, moe.intermediate_size)
        self.shared_expert = self.shared_expert_gate = None
        if moe.shared_expert_intermediate_size:
            self.shared_expert = DecoderMLP(cfg.hidden_size, moe.shared_expert_intermediate_size, reduce_results=False)
            if moe.shared_expert_gated:
                self.shared_expert_gate = ReplicatedLinear(cfg.hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        moe = self.moe
        weights, ids = route(self.gate(x), moe.top_k, moe.renormalize, scoring=moe.scoring, num_groups=moe.num_groups,
                             topk_groups=moe.topk_groups, bias=self.gate.e_score_correction_bias,
                             scaling=moe.routed_scaling_factor)
        y = self.experts(x, weights, ids)
        if self.shared_expert_gate is not None:
            y = y + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        elif self.shared_expert is not None:
            y = y + self.shared_expert(x)
        return all_reduce(y)


def mtp_layer_prefixes(cfg: ModelConfig) -> tuple[str, ...]:
    """Checkpoint prefixes of the multi-token-prediction layers DeepSeek-V3 and GLM-4.5 store after
    their last decoder layer (`num_nextn_predict_layers`): a speculative head the engine does not serve."""
    extra = int(cfg.hf_config.get("num_nextn_predict_layers") or 0)
    return tuple(f"model.layers.{cfg.num_layers + i}." for i in range(extra))


class _MixtureOfExperts:
    """Routes the sparse layers' MLPs to experts and maps expert tensors onto the stacked parameters."""

    @staticmethod
    def make_mlp(cfg: ModelConfig, layer: int) -> nn.Module:
        if cfg.moe is not None and cfg.moe.is_sparse(layer):
            return SparseMoeBlock(cfg)
        return DecoderMLP(cfg.hidden_size, cfg.intermediate_size)

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        name = name.replace(".block_sparse_moe.", ".mlp.")  # Mixtral's name for the MoE block
        name = name.replace(".mlp.shared_experts.", ".mlp.shared_expert.")  # DeepSeek's
        if match := _EXPERT.match(name):
            part = EXPERT_PARTS.get(match["part"])
            if part is not None:
                param = f"{'w2' if part == 2 else 'w13'}{_EXPERT_LEAVES[match['leaf']]}"
                return f"{match['layer']}.{param}", (int(match["expert"]), part)
        if match := _STACKED.match(name):
            down = match["part"] == "down_proj"
            return f"{match['layer']}.{'w2' if down else 'w13'}", (STACKED, 2 if down else 0)
        return super().checkpoint_target(name)  # type: ignore[misc]


class MixtralForCausalLM(_MixtureOfExperts, LlamaForCausalLM):
    pass


class Qwen2MoeForCausalLM(_MixtureOfExperts, Qwen2ForCausalLM):
    pass


class Qwen3MoeForCausalLM(_MixtureOfExperts, Qwen3ForCausalLM):
    pass


class OlmoeForCausalLM(_MixtureOfExperts, LlamaForCausalLM):
    """OLMoE: Llama's pre-norm layers, q and k normalized across all their heads (as OLMo 2's), every
    MLP routed, without renormalizing the top-k weights."""

    qk_norm = "whole"


class HunYuanMoEV1ForCausalLM(_MixtureOfExperts, HunYuanDenseV1ForCausalLM):
    """Hunyuan-A13B: Hunyuan's attention, every MLP routed (softmax, `moe_topk`, router `gate.wg` in fp32) beside
    an always-on `shared_mlp` as wide as the experts."""

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        return super().checkpoint_target(name.replace(".mlp.gate.wg.", ".mlp.gate.").replace(".mlp.shared_mlp.",
                                                                                            ".mlp.shared_expert."))


class ExaoneMoeForCausalLM(_MixtureOfExperts, LlamaForCausalLM):
    """LG's K-EXAONE (236B-A23B): pre-norm layers with EXAONE 4's attention (per-head q/k norms; with a
    sliding window, three local layers with rotary to one global layer without) and DeepSeek-V3's experts
    (sigmoid router steered by a correction bias, a shared expert, dense first layers); MTP skipped."""

    ignored_checkpoint_prefixes: tuple[str, ...] = ("mtp.", "model.mtp.")

    def layer_options(self, cfg: ModelConfig, layer: int) -> dict[str, Any]:
        kinds = exaone_layer_types(cfg) if cfg.sliding_window is not None else None
        window, rope = layer_attention(cfg, layer, kinds)
        return {"attention": DecoderAttention(cfg, cfg.attention_bias, True, rope=rope, sliding_window=window,
                                              use_rope=kinds is None or window is not None)}

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        return super().checkpoint_target(name.replace(".mlp.e_score_correction_bias", ".mlp.gate.e_score_correction_bias"))


class Dots1ForCausalLM(_MixtureOfExperts, Qwen3ForCausalLM):
    """rednote's dots.llm1 (142B-A14B): Qwen3's attention (per-head q/k norms) with DeepSeek-V3's experts
    (sigmoid router steered by a correction bias, expert groups, shared experts, dense first layers)."""


class Ernie45MoeForCausalLM(_MixtureOfExperts, Ernie45ForCausalLM):
    """ERNIE 4.5 MoE (21B-A3B, 300B-A47B): ERNIE 4.5's layers (interleaved rotary) with experts every
    `moe_layer_interval`-th layer from `moe_layer_start_index`, routed by softmax scores whose choice a
    correction bias steers (stored as `moe_statics`), beside always-on shared experts."""

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        return super().checkpoint_target(name.replace(".moe_statics.e_score_correction_bias", ".e_score_correction_bias")
                                         .replace(".mlp.e_score_correction_bias", ".mlp.gate.e_score_correction_bias"))


class MiniMaxM2ForCausalLM(_MixtureOfExperts, LlamaForCausalLM):
    """MiniMax-M2 and M2.1 (230B-A10B): Llama's pre-norm layers, q and k normalized across all their heads,
    half of each head rotated (`rotary_dim`), every MLP routed by sigmoid scores steered by a correction
    bias (the block's `e_score_correction_bias`, the router's here) and renormalized."""

    qk_norm = "whole"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        # Its multi-token-prediction modules, stored as layers after the last: a speculative head not served.
        extra = int(cfg.hf_config.get("num_mtp_modules") or 0) if cfg.hf_config.get("use_mtp", True) else 0
        self.ignored_checkpoint_prefixes = tuple(f"model.layers.{cfg.num_layers + i}." for i in range(extra))

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        name = name.replace(".block_sparse_moe.e_score_correction_bias", ".mlp.gate.e_score_correction_bias")
        return super().checkpoint_target(name.replace(".mlp.e_score_correction_bias", ".mlp.gate.e_score_correction_bias"))


class GraniteMoeForCausalLM(_MixtureOfExperts, GraniteForCausalLM):
    """IBM Granite 3.x MoE: Granite's multipliers around Mixtral-like layers, whose checkpoints stack
    each layer's experts (`input_linear` [E, 2I, H], gate rows then up rows; `output_linear`
    [E, H, I]) and name the router `router.layer`."""

    _NAMES = {".block_sparse_moe.input_linear.": ".mlp.experts.gate_up_proj.",
              ".block_sparse_moe.output_linear.": ".mlp.experts.down_proj.",
              ".block_sparse_moe.router.layer.": ".mlp.gate."}

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        for theirs, ours in self._NAMES.items():
            if theirs in name:
                name = name.replace(theirs, ours)
                if ours.startswith(".mlp.experts."):  # a stacked tensor: named as transformers 5 holds it
                    name = name.removesuffix(".weight")
                break
        return super().checkpoint_target(name)


class Glm4MoeForCausalLM(_MixtureOfExperts, LlamaForCausalLM):
    """GLM-4.5, 4.6 and 4.5-Air (Zhipu's MoE): Llama's pre-norm layers with q/k/v biases but none on
    o_proj, per-head q/k norms where `use_qk_norm` says, half of each head rotated (neox layout),
    DeepSeek-V3's router (sigmoid scores steered by a correction bias, scaled weights) and a shared
    expert, dense first layers (`first_k_dense_replace`); MTP layers in the checkpoint are skipped."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.ignored_checkpoint_prefixes = mtp_layer_prefixes(cfg)

    @property
    def qk_norm(self) -> bool:  # type: ignore[override]
        return bool(self.config.hf_config.get("use_qk_norm"))

    def layer_options(self, cfg: ModelConfig, layer: int) -> dict[str, Any]:
        return {"o_bias": False}
