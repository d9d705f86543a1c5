"""Xiaomi's MiMo-V2-Flash (`MiMoV2FlashForCausalLM`, 309B-A15B): sliding-window layers (five in six) and
global ones with DeepSeek-V3's routed experts (no shared expert) after a dense first MLP.

Its attention is GQA with query/key heads of 192 and value heads of 128; a sliding layer has twice the
KV heads of a global one and learned attention sinks (GPT-OSS's); a third of each head rotates (each
kind at its own base), and values are scaled by `attention_value_scale` before attention. Values are
padded to the key width in the cache (their extra columns zero, so the attention's are too) and cut back
after: the paged kernels keep one head size per layer, and each layer's K/V rows differ in width across
kinds (the cache sizes its slots for the widest, layers/attention.py's kv_cache_row).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagoda.engine.attention import AttentionMetadata
from pagoda.engine.layers.attention import Attention
from pagoda.engine.layers.linear import QKVParallelLinear, RowParallelLinear
from pagoda.engine.layers.rotary import RotaryEmbedding
from pagoda.engine.model_config import ModelConfig, sliding_rope
from pagoda.engine.models.gemma3 import FULL, SLIDING, layer_types
from pagoda.engine.models.llama import LlamaForCausalLM
from pagoda.engine.models.moe import _MixtureOfExperts


class MiMoV2Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, sliding: bool) -> None:
        super().__init__()
        hf = cfg.hf_config
        self.head_dim, self.value_dim = cfg.head_dim, int(hf.get("v_head_dim") or cfg.head_dim)
        kv_heads = cfg.num_kv_heads * (2 if sliding else 1)
        self.qkv_proj = QKVParallelLinear(cfg.hidden_size, self.head_dim, cfg.num_heads, kv_heads, cfg.attention_bias,
                                          value_head_dim=self.value_dim)
        heads, kv = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.split = [heads * self.head_dim, kv * self.head_dim, kv * self.value_dim]
        self.o_proj = RowParallelLinear(cfg.num_heads * self.value_dim, cfg.hidden_size)
        rope = (sliding_rope(hf) or cfg.rope) if sliding else cfg.rope
        self.rotary_emb = RotaryEmbedding(self.head_dim, cfg.max_position_embeddings, rope, cfg.max_model_len)
        self.attn = Attention(heads, kv, self.head_dim, cfg.sliding_window if sliding else None, sinks=sliding)
        scale = hf.get("attention_value_scale")
        self.value_scale = 1.0 if scale is None else float(scale)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        t = x.shape[0]
        q, k, v = self.qkv_proj(x).split(self.split, dim=-1)
        q, k = self.rotary_emb(positions, q.reshape(t, -1, self.head_dim), k.reshape(t, -1, self.head_dim))
        v = nn.functional.pad(v.reshape(t, -1, self.value_dim) * self.value_scale, (0, self.head_dim - self.value_dim))
        out = self.attn(q.reshape(t, -1), k.reshape(t, -1), v.reshape(t, -1), meta)
        return self.o_proj(out.view(t, -1, self.head_dim)[..., : self.value_dim].reshape(t, -1))


class MiMoV2FlashForCausalLM(_MixtureOfExperts, LlamaForCausalLM):
    # The multi-token-prediction layers hub checkpoints carry: a speculative head the engine does not serve.
    ignored_checkpoint_prefixes: tuple[str, ...] = ("model.mtp.",)

    def layer_options(self, cfg: ModelConfig, layer: int) -> dict[str, Any]:
        kinds = layer_types(cfg)
        if len(kinds) != cfg.num_layers or set(kinds) - {SLIDING, FULL}:
            raise ValueError(f"layer_types must name {cfg.num_layers} layers, each {SLIDING} or {FULL}: {kinds}")
        return {"attention": MiMoV2Attention(cfg, kinds[layer] == SLIDING)}

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        """The sliding layers' sinks: `attention_sink_bias` in hub checkpoints (`sinks` as transformers holds them)."""
        for leaf in (".self_attn.attention_sink_bias", ".self_attn.sinks"):
            if name.endswith(leaf):
                return name.replace(leaf, ".self_attn.attn.sinks"), None
        return super().checkpoint_target(name)
