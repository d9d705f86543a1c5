"""Hybrid decoders whose layers are Mamba-2 mixers or attention: IBM Granite 4.0-H (and Granite 4.0's
dense models, which share its architecture).

A Mamba layer takes the place of attention inside an otherwise ordinary decoder
layer (norm, mixer, residual, norm, MLP, residual): the mixer keeps per-sequence
states instead of KV (engine/layers/mamba.py), and only the attention layers
take blocks of the paged KV cache.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagoda.engine.attention import AttentionMetadata
from pagoda.engine.layers.mamba import Mamba2Mixer
from pagoda.engine.model_config import ModelConfig, mamba_config
from pagoda.engine.models.llama import DecoderAttention, DecoderMLP
from pagoda.engine.models.moe import GraniteMoeForCausalLM, SparseMoeBlock

# config.json's names of a layer's kind: transformers 5's, and the hub's older ones.
_MAMBA_KINDS = ("linear_attention", "mamba")
_ATTENTION_KINDS = ("full_attention", "attention")


class MambaMixerLayer(Mamba2Mixer):
    """The mixer in a decoder layer's attention place (positions unused: the scan is ordered by itself)."""

    def forward(self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        return super().forward(x, meta)


def layer_kinds(cfg: ModelConfig, key: str = "layer_types") -> list[str]:
    """Each layer's kind, "mamba" or "attention", from the config's list."""
    kinds = cfg.hf_config.get(key) or []
    if len(kinds) != cfg.num_layers or any(k not in _MAMBA_KINDS + _ATTENTION_KINDS for k in kinds):
        raise ValueError(f"{key} must name {cfg.num_layers} layers, each one of "
                         f"{', '.join(_MAMBA_KINDS + _ATTENTION_KINDS)}: {kinds}")
    return ["mamba" if k in _MAMBA_KINDS else "attention" for k in kinds]


class GraniteMoeHybridForCausalLM(GraniteMoeForCausalLM):
    """Granite 4.0-H (Micro, Tiny, Small) and Granite 4.0's dense models: Granite's multipliers, layers
    of Mamba-2 or attention (without rotary where `position_embedding_type` is not "rope", as in every
    Granite 4.0), and after each a shared MLP, beside routed experts where the model has them."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.kinds = layer_kinds(cfg)
        self.mamba = mamba_config(cfg.hf_config)
        super().__init__(cfg)
        shared = ".mlp.shared_expert." if cfg.moe is not None else ".mlp."
        self._names = {".shared_mlp.input_linear.": f"{shared}gate_up_proj.",
                       ".shared_mlp.output_linear.": f"{shared}down_proj.", ".mamba.": ".self_attn."}

    @staticmethod
    def make_mlp(cfg: ModelConfig, layer: int) -> nn.Module:
        if cfg.moe is not None:
            return SparseMoeBlock(cfg)
        return DecoderMLP(cfg.hidden_size, int(cfg.hf_config["shared_intermediate_size"]))

    def layer_options(self, cfg: ModelConfig, layer: int) -> dict[str, Any]:
        if self.kinds[layer] == "mamba":
            return {"attention": MambaMixerLayer(cfg.hidden_size, self.mamba)}
        rope = cfg.hf_config.get("position_embedding_type") == "rope"
        return {"attention": DecoderAttention(cfg, cfg.attention_bias, False, use_rope=rope,
                                              scale=float(cfg.hf_config.get("attention_multiplier") or 1.0))}

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        for theirs, ours in self._names.items():
            name = name.replace(theirs, ours)
        return super().checkpoint_target(name)
