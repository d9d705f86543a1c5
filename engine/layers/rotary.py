"""Rotary position embedding with the scaling rules of the supported families.

The cos/sin table is built once for every position up to max_position and
indexed by each token's position, so chunked prefill and decode share it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pagoda.engine.model_config import RopeConfig

SUPPORTED_ROPE_SCALING = ("default", "linear", "llama3")


def _inv_freq(rotary_dim: int, rope: RopeConfig) -> torch.Tensor:
    # float32 throughout, as the reference implementations compute it: a
    # float64 table would be "more exact" yet disagree with every checkpoint's
    # training-time numerics at long positions.
    inv_freq = 1.0 / (rope.theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))
    kind = rope.scaling_type
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / float(rope.scaling["factor"])
    if kind == "llama3":
        return _llama3_scale(inv_freq, rope.scaling)
    raise ValueError(f"rope scaling {kind!r} is not supported; supported: {list(SUPPORTED_ROPE_SCALING)}")


def _llama3_scale(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    """Llama 3.1's rule: long wavelengths slowed by `factor`, short kept, a smooth blend between."""
    factor = float(s["factor"])
    low = float(s.get("low_freq_factor", 1.0))
    high = float(s.get("high_freq_factor", 4.0))
    old_ctx = float(s["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_ctx / wavelen - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
    middle = (wavelen <= old_ctx / low) & (wavelen >= old_ctx / high)
    return torch.where(middle, blended, out)


class RotaryEmbedding(nn.Module):
    """Applies the rotation to q and k in the neox (rotate-half) layout used by these families."""

    def __init__(self, head_dim: int, max_position: int, rope: RopeConfig) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.rotary_dim = int(head_dim * rope.partial_rotary_factor)
        inv_freq = _inv_freq(self.rotary_dim, rope)
        freqs = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq)
        cache = torch.cat([freqs.cos(), freqs.sin()], dim=-1)
        self.register_buffer("cos_sin_cache", cache, persistent=False)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q: [tokens, heads, head_dim], k: [tokens, kv_heads, head_dim]."""
        from pagoda.kernels import ops

        return ops.rotary_embedding(positions, q, k, self.cos_sin_cache, self.rotary_dim)
