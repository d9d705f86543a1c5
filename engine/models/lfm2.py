"""Liquid AI LFM2 (350M to 2.6B): gated short convolutions in most layers, attention (per-head q/k
RMSNorms, rotary) in the few `layer_types` (or `full_attn_idxs`) names, each followed by a SwiGLU MLP;
LFM2-MoE (8B-A1B): the same with experts after its first `num_dense_layers` (sigmoid scores steered by
an expert bias).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pagoda.engine.layers.norm import RMSNorm
from pagoda.engine.layers.short_conv import ShortConv
from pagoda.engine.model_config import ModelConfig
from pagoda.engine.models.llama import DecoderAttention, DecoderMLP, DecoderModel, LlamaForCausalLM
from pagoda.engine.models.moe import SparseMoeBlock, _MixtureOfExperts

# Checkpoint names -> ours, in this order (attention's out_proj is renamed before the convolution's
# parts move under self_attn, where LFM2's attention and convolution both sit in our layers).
_NAMES = ((".self_attn.out_proj.", ".self_attn.o_proj."), (".self_attn.q_layernorm.", ".self_attn.q_norm."),
          (".self_attn.k_layernorm.", ".self_attn.k_norm."), (".conv.conv.", ".self_attn.conv1d."),
          (".conv.in_proj.", ".self_attn.in_proj."), (".conv.out_proj.", ".self_attn.out_proj."),
          (".feed_forward.w1.", ".mlp.gate_proj."), (".feed_forward.w3.", ".mlp.up_proj."),
          (".feed_forward.w2.", ".mlp.down_proj."), (".feed_forward.", ".mlp."), (".operator_norm.", ".input_layernorm."),
          (".ffn_norm.", ".post_attention_layernorm."), ("model.embedding_norm.", "model.norm."))


def feed_forward_size(hf: dict[str, Any]) -> int:
    """The MLP's width: config.json's, or, with block_auto_adjust_ff_dim, two thirds of it times
    block_ffn_dim_multiplier rounded up to block_multiple_of (as LFM2 sizes it)."""
    size = int(hf.get("intermediate_size") or hf["block_ff_dim"])
    if not hf.get("block_auto_adjust_ff_dim", True):
        return size
    size = int(2 * size / 3)
    multiplier, multiple = hf.get("block_ffn_dim_multiplier"), int(hf.get("block_multiple_of") or 256)
    if multiplier is not None:
        size = multiple * ((int(float(multiplier) * size) + multiple - 1) // multiple)
    return size


class Lfm2ForCausalLM(LlamaForCausalLM):
    def __init__(self, cfg: ModelConfig) -> None:
        hf = cfg.hf_config
        attention = hf.get("full_attn_idxs")
        kinds = hf.get("layer_types") or ["full_attention" if i in (attention or ()) else "conv"
                                           for i in range(cfg.num_layers)]
        if len(kinds) != cfg.num_layers or any(k not in ("conv", "full_attention") for k in kinds):
            raise ValueError(f"layer_types must name {cfg.num_layers} layers, each conv or full_attention: {kinds}")
        self.kinds, self.eps = kinds, float(hf.get("norm_eps") or 1e-5)
        super().__init__(cfg)

    def build_decoder(self, cfg: ModelConfig, qkv_bias: bool) -> nn.Module:
        model = DecoderModel(cfg, qkv_bias, True, self.make_mlp, layer_options=self.layer_options)
        model.norm = RMSNorm(cfg.hidden_size, self.eps)
        return model

    @staticmethod
    def make_mlp(cfg: ModelConfig, layer: int) -> nn.Module:
        return DecoderMLP(cfg.hidden_size, feed_forward_size(cfg.hf_config))

    def layer_options(self, cfg: ModelConfig, layer: int) -> dict[str, Any]:
        if self.kinds[layer] == "conv":
            hf = cfg.hf_config
            mixer: nn.Module = ShortConv(cfg.hidden_size, int(hf.get("conv_L_cache") or 3), bool(hf.get("conv_bias")))
        else:
            mixer = DecoderAttention(cfg, False, True, norm=lambda size, _: RMSNorm(size, self.eps))
        return {"attention": mixer, "eps": self.eps}

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        for theirs, ours in _NAMES:
            name = name.replace(theirs, ours)
        return super().checkpoint_target(name)


class Lfm2MoeForCausalLM(_MixtureOfExperts, Lfm2ForCausalLM):
    @staticmethod
    def make_mlp(cfg: ModelConfig, layer: int) -> nn.Module:
        if cfg.moe is not None and cfg.moe.is_sparse(layer):
            return SparseMoeBlock(cfg)
        return DecoderMLP(cfg.hidden_size, cfg.intermediate_size)  # LFM2-MoE's dense layers take it as it is

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        """The experts' names as _MixtureOfExperts reads them (under `mlp`), the router's bias on the router."""
        name = name.replace(".feed_forward.expert_bias", ".mlp.gate.e_score_correction_bias")
        return super().checkpoint_target(name.replace(".feed_forward.experts.", ".mlp.experts."))
