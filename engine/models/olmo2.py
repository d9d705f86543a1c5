"""OLMo 2 (`Olmo2ForCausalLM`: AI2's OLMo-2 7B, 13B, 32B) and OLMo 3 (`Olmo3ForCausalLM`: OLMo 2's layers,
three in four with a sliding window, as `layer_types` says).

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
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        window, rope = layer_attention(cfg, layer)
        self.self_attn = DecoderAttention(cfg, qkv_bias=cfg.attention_bias, qk_norm="whole", rope=rope,
                                          sliding_window=window)
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
