"""Cohere Command-R (`CohereForCausalLM`: c4ai-command-r-v01, Command-R 08-2024, Aya 23 and Aya Expanse)
and its second generation (`Cohere2ForCausalLM`: Command R7B, Command A).

Attention and MLP in parallel on one LayerNorm (no bias) of the residual stream, both outputs added
to it at once; rotary in the interleaved (gpt-j) layout; logits scaled by `logit_scale`; Command R+
normalizes q and k per head (`use_qk_norm`: a bias-free LayerNorm with each head's own weight). The
second generation interleaves sliding-window layers, which rotate, with global layers, which do not
(three to one in the hub's configs, where `sliding_window_pattern` stands for `layer_types`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagoda.engine.attention import AttentionMetadata
from pagoda.engine.layers.norm import LayerNorm
from pagoda.engine.layers.weights import copy_into, read_shard
from pagoda.engine.model_config import ModelConfig
from pagoda.engine.models.llama import DecoderAttention, DecoderMLP, DecoderModel, LlamaForCausalLM, layer_attention


class HeadLayerNorm(nn.Module):
    """Command R+'s q or k norm: a bias-free LayerNorm of each head's vector with that head's own weight;
    a rank holds the weights of its heads, [first_head, first_head + heads)."""

    def __init__(self, heads: int, first_head: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.first_head, self.eps = first_head, eps
        self.weight = nn.Parameter(torch.ones(heads, head_dim), requires_grad=False)
        self.weight.weight_loader = self._load

    def _load(self, param: nn.Parameter, src: Any) -> None:
        copy_into(param, read_shard(src, 0, self.first_head, param.shape[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [tokens, heads, head_dim]."""
        centered = x.float() - x.float().mean(-1, keepdim=True)
        normed = centered * torch.rsqrt(centered.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * normed).to(x.dtype)


class CohereDecoderLayer(nn.Module):
    """`kinds`: the second generation's layer types (a sliding layer rotates, a global one does not); None
    for the first, whose every layer rotates over the whole context."""

    def __init__(self, cfg: ModelConfig, layer: int, kinds: list[str] | None = None) -> None:
        super().__init__()
        window, rope = layer_attention(cfg, layer, kinds) if kinds else (None, cfg.rope)
        self.self_attn = DecoderAttention(cfg, qkv_bias=cfg.attention_bias, qk_norm=False, rope=rope,
                                          sliding_window=window, rotary_interleaved=True,
                                          use_rope=kinds is None or window is not None)
        if cfg.hf_config.get("use_qk_norm"):
            qkv = self.self_attn.qkv_proj  # the norms' weights split as its heads are
            self.self_attn.q_norm = HeadLayerNorm(qkv.num_heads, qkv.first_head("q"), cfg.head_dim, _eps(cfg))
            self.self_attn.k_norm = HeadLayerNorm(qkv.num_kv_heads, qkv.first_head("k"), cfg.head_dim, _eps(cfg))
        self.mlp = DecoderMLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = LayerNorm(cfg.hidden_size, _eps(cfg), bias=False)

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None, meta: AttentionMetadata
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x is the previous layer's output, not yet added to the residual stream (None: the embeddings)."""
        x, residual = self.input_layernorm.with_residual(x, residual)
        return self.self_attn(positions, x, meta) + self.mlp(x), residual


def _eps(cfg: ModelConfig) -> float:
    return float(cfg.hf_config.get("layer_norm_eps", 1e-5))


class CohereForCausalLM(LlamaForCausalLM):
    def layer_kinds(self, cfg: ModelConfig) -> list[str] | None:
        """Each layer's attention kind where the family interleaves sliding and global layers."""
        return None

    def build_decoder(self, cfg: ModelConfig, qkv_bias: bool) -> nn.Module:
        kinds = self.layer_kinds(cfg)
        model = DecoderModel(cfg, qkv_bias, False, self.make_mlp,
                             make_layer=lambda cfg, layer: CohereDecoderLayer(cfg, layer, kinds))
        model.norm = LayerNorm(cfg.hidden_size, _eps(cfg), bias=False)
        return model

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden) * float(self.config.hf_config.get("logit_scale", 1.0))


class Cohere2ForCausalLM(CohereForCausalLM):
    def layer_kinds(self, cfg: ModelConfig) -> list[str]:
        hf = cfg.hf_config
        pattern = int(hf.get("sliding_window_pattern") or 4)
        return hf.get("layer_types") or ["sliding_attention" if (i + 1) % pattern else "full_attention"
                                         for i in range(cfg.num_layers)]
