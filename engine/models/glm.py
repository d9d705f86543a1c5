"""GLM-4 (`Glm4ForCausalLM`: GLM-4-9B-0414, GLM-4-32B-0414) and GLM (`GlmForCausalLM`: glm-4-9b-chat-hf).

Llama's structure with GLM's choices: q/k/v biases (none on o), a partial rotary (half the head) in the
interleaved (gpt-j) layout, gate and up stored fused (`gate_up_proj`, loaded as Phi-3's); GLM-4
adds a norm after attention and one after the MLP, on each branch before it joins the residual
stream (`post_self_attn_layernorm`, `post_mlp_layernorm`).
"""

from __future__ import annotations

import torch
from torch import nn

from pagoda.engine.attention import AttentionMetadata
from pagoda.engine.layers.norm import RMSNorm
from pagoda.engine.model_config import ModelConfig
from pagoda.engine.models.llama import DecoderAttention, DecoderMLP, DecoderModel, LlamaForCausalLM


class GlmDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, post_norms: bool) -> None:
        super().__init__()
        self.self_attn = DecoderAttention(cfg, qkv_bias=cfg.attention_bias, qk_norm=False, rotary_interleaved=True,
                                          o_bias=False)
        self.mlp = DecoderMLP(cfg.hidden_size, cfg.intermediate_size)
        eps = cfg.rms_norm_eps
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.post_self_attn_layernorm = RMSNorm(cfg.hidden_size, eps) if post_norms else None
        self.post_mlp_layernorm = RMSNorm(cfg.hidden_size, eps) if post_norms else None

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None, meta: AttentionMetadata
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x is the previous layer's output, not yet added to the residual stream (None: the embeddings)."""
        x, residual = self.input_layernorm.with_residual(x, residual)
        x = self.self_attn(positions, x, meta)
        if self.post_self_attn_layernorm is not None:
            x = self.post_self_attn_layernorm(x)
        x, residual = self.post_attention_layernorm(x, residual)
        x = self.mlp(x)
        return (x if self.post_mlp_layernorm is None else self.post_mlp_layernorm(x)), residual


class GlmForCausalLM(LlamaForCausalLM):
    post_norms = False

    def build_decoder(self, cfg: ModelConfig, qkv_bias: bool) -> nn.Module:
        return DecoderModel(cfg, qkv_bias, False, self.make_mlp,
                            make_layer=lambda cfg, _: GlmDecoderLayer(cfg, self.post_norms))


class Glm4ForCausalLM(GlmForCausalLM):
    post_norms = True
