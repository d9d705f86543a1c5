"""OLMo 2 (`Olmo2ForCausalLM`: AI2's OLMo-2 7B, 13B, 32B), OLMo 3 (`Olmo3ForCausalLM`: OLMo 2's layers,
three in four with a sliding window, as `layer_types` says) and EXAONE 4.0 (`Exaone4ForCausalLM`).

Llama's attention and MLP in a post-norm layer: no norm before attention or the MLP; each
branch's output is normalized before it joins the residual stream (`post_attention_layernorm`,
`post_feedforward_layernorm`). q and k are normalized across all heads of their projection,
before the split into heads (a ShardedRMSNorm under tensor parallelism).
"""

from __future__ import annotations

import torch
from torch import nn

from pagoda.engine.attention import AttentionMetadata
from pagoda.engine.layers.norm import RMSNorm
from pagoda.engine.model_config import ModelConfig
from pagoda.engine.models.llama import DecoderAttention, DecoderMLP, DecoderModel, LlamaForCausalLM, layer_attention


class Olmo2DecoderLayer(nn.Module):
    """Post-norm attention then MLP; `qk_norm` across all heads ("whole") or per head (EXAONE 4), and
    with `kinds` (EXAONE 4's sliding pattern) rotary only in the sliding layers, the global ones NoPE
    (every layer without `use_rope`: OLMo Hybrid's released checkpoints)."""

    def __init__(self, cfg: ModelConfig, layer: int, qk_norm: bool | str = "whole",
                 kinds: list[str] | None = None, use_rope: bool = True) -> None:
        super().__init__()
        window, rope = layer_attention(cfg, layer, kinds)
        nope = not use_rope or (kinds is not None and cfg.sliding_window is not None and window is None)
        self.self_attn = DecoderAttention(cfg, qkv_bias=cfg.attention_bias, qk_norm=qk_norm, rope=rope,
                                          sliding_window=window, use_rope=not nope)
        self.mlp = DecoderMLP(cfg.hidden_size, cfg.intermediate_size)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None, meta: AttentionMetadata
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x is the previous layer's output, not yet added to the residual stream (None: the embeddings)."""
        hidden = x if residual is None else x + residual
        hidden = hidden + self.post_attention_layernorm(self.self_attn(positions, hidden, meta))
        return self.post_feedforward_layernorm(self.mlp(hidden)), hidden


class Olmo2ForCausalLM(LlamaForCausalLM):
    def build_decoder(self, cfg: ModelConfig, qkv_bias: bool) -> nn.Module:
        return DecoderModel(cfg, qkv_bias, False, self.make_mlp, make_layer=Olmo2DecoderLayer)


def exaone_layer_types(cfg: ModelConfig) -> list[str]:
    """EXAONE 4's layer kinds: `layer_types`, else `sliding_window_pattern` ("LLLG": local, local,
    local, global, repeated; or every n-th layer global)."""
    if cfg.hf_config.get("layer_types"):
        return list(cfg.hf_config["layer_types"])
    pattern = cfg.hf_config.get("sliding_window_pattern") or 4
    if isinstance(pattern, str):
        return ["sliding_attention" if pattern[i % len(pattern)] == "L" else "full_attention"
                for i in range(cfg.num_layers)]
    return ["sliding_attention" if (i + 1) % int(pattern) else "full_attention" for i in range(cfg.num_layers)]


class Exaone4ForCausalLM(Olmo2ForCausalLM):
    """EXAONE 4.0: OLMo 2's post-norm layers with per-head q/k norms; with a sliding window, three
    local layers with rotary to one global layer without (NoPE)."""

    def build_decoder(self, cfg: ModelConfig, qkv_bias: bool) -> nn.Module:
        kinds = exaone_layer_types(cfg) if cfg.sliding_window is not None else None
        return DecoderModel(cfg, qkv_bias, False, self.make_mlp,
                            make_layer=lambda cfg, i: Olmo2DecoderLayer(cfg, i, qk_norm=True, kinds=kinds))
