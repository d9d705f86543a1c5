"""Qwen3.5 (dense 0.8B to 27B, and the MoE 35B-A3B to 397B-A17B) and Qwen3-Next: three Gated DeltaNet
layers to one of full attention (images: engine/models/qwen_vl.py).

The linear-attention layers (engine/layers/gated_delta.py) keep a fixed-size state per sequence;
the full-attention ones (every `full_attention_interval`-th, as `layer_types` lists them) use the
paged KV cache, with a sigmoid output gate per head stored after each head's query in q_proj,
per-head q/k norms and rotary over a quarter of each head. Every RMSNorm outside the linear
attention scales by (1 + weight), as Gemma's (GemmaRMSNorm adds the one at load).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pagoda.engine.layers.gated_delta import GatedDeltaNet, GroupedGatedDeltaNet
from pagoda.engine.layers.norm import GemmaRMSNorm
from pagoda.engine.model_config import LinearAttentionConfig, ModelConfig
from pagoda.engine.models.llama import DecoderAttention, DecoderModel, LlamaForCausalLM
from pagoda.engine.models.moe import _MixtureOfExperts

_KINDS = ("linear_attention", "full_attention")
# Checkpoint names of the linear attention's separate z, b and a projections -> their part of our in_proj_zba.
_ZBA = {".in_proj_z.": 0, ".in_proj_b.": 1, ".in_proj_a.": 2}


class Qwen3_5ForCausalLM(LlamaForCausalLM):
    # The multi-token-prediction layer hub checkpoints carry: a speculative head the engine does not serve.
    ignored_checkpoint_prefixes: tuple[str, ...] = ("mtp.",)
    linear_attention: type[GatedDeltaNet] = GatedDeltaNet

    def __init__(self, cfg: ModelConfig) -> None:
        hf = cfg.hf_config
        interval = int(hf.get("full_attention_interval") or 4)  # hub Qwen3-Next configs give only this
        kinds = hf.get("layer_types") or [_KINDS[(i + 1) % interval == 0] for i in range(cfg.num_layers)]
        if len(kinds) != cfg.num_layers or any(k not in _KINDS for k in kinds):
            raise ValueError(f"layer_types must name {cfg.num_layers} layers, each one of {', '.join(_KINDS)}: {kinds}")
        self.kinds = kinds
        self.linear = LinearAttentionConfig.from_hf(cfg.hf_config)
        super().__init__(cfg)

    def build_decoder(self, cfg: ModelConfig, qkv_bias: bool) -> nn.Module:
        model = DecoderModel(cfg, qkv_bias, True, self.make_mlp, layer_options=self.layer_options)
        model.norm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        return model

    def layer_options(self, cfg: ModelConfig, layer: int) -> dict[str, Any]:
        if self.kinds[layer] == "linear_attention":
            attention: nn.Module = self.linear_attention(cfg.hidden_size, self.linear)
        else:
            attention = DecoderAttention(cfg, cfg.attention_bias, True, norm=GemmaRMSNorm, output_gate=True)
        return {"attention": attention, "norm": GemmaRMSNorm}

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        name = name.replace(".linear_attn.", ".self_attn.")
        for theirs, part in _ZBA.items():
            if theirs in name:
                return name.replace(theirs, ".in_proj_zba."), part
        return super().checkpoint_target(name)


class Qwen3_5MoeForCausalLM(_MixtureOfExperts, Qwen3_5ForCausalLM):
    """Qwen3.5's MoE models: every MLP routed to experts, beside a shared expert behind a sigmoid gate."""


class Qwen3NextForCausalLM(Qwen3_5MoeForCausalLM):
    """Qwen3-Next-80B-A3B: Qwen3.5-MoE's layers (its predecessor) with the linear attention's projections
    stored grouped by key head, and dense MLPs where `mlp_only_layers` or `decoder_sparse_step` say."""

    linear_attention = GroupedGatedDeltaNet
