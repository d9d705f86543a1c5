"""Rotary position embedding with the scaling rules of the supported families.

The cos/sin table is built once for every position up to max_position and
indexed by each token's position, so chunked prefill and decode share it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from pagoda.engine.model_config import LONGROPE, RopeConfig

SUPPORTED_ROPE_SCALING = ("default", "linear", "llama3", "longrope")


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
    if kind in LONGROPE:  # the short factors: load_model_config keeps the context where they apply
        factors = torch.tensor(rope.scaling["short_factor"], dtype=torch.float32)
        if factors.numel() != inv_freq.numel():
            raise ValueError(f"longrope short_factor has {factors.numel()} entries, the rotary dims {inv_freq.numel()}")
        return inv_freq / factors
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


def _attention_factor(rope: RopeConfig, max_position: int) -> float:
    """LongRoPE's scale of cos and sin (on q and k alike): sqrt(1 + ln(s) / ln(original context)) for
    the context extension s, unless the config gives it; 1 for every other rule."""
    if rope.scaling_type not in LONGROPE:
        return 1.0
    if rope.scaling.get("attention_factor") is not None:
        return float(rope.scaling["attention_factor"])
    original = float(rope.scaling["original_max_position_embeddings"])
    factor = float(rope.scaling.get("factor") or max_position / original)
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))


# Tables by (rotary dims, model positions, table length, rope settings, device); the oldest goes past 8.
_TABLES: dict[tuple[Any, ...], torch.Tensor] = {}


def _cos_sin_table(rotary_dim: int, max_position: int, num_positions: int, rope: RopeConfig) -> torch.Tensor:
    """[num_positions, rotary_dim] cos then sin on the default device, built once per model and device
    and shared by its layers: at 128k positions a table is 64 MiB, which every layer holding its own
    would multiply by the layer count."""
    device = torch.empty(0).device
    key = (rotary_dim, max_position, num_positions, repr(rope), device)
    if key not in _TABLES:
        inv_freq = _inv_freq(rotary_dim, rope)
        freqs = torch.outer(torch.arange(num_positions, dtype=torch.float32), inv_freq)
        scale = _attention_factor(rope, max_position)
        _TABLES[key] = torch.cat([freqs.cos() * scale, freqs.sin() * scale], dim=-1)
        if len(_TABLES) > 8:
            del _TABLES[next(iter(_TABLES))]
    return _TABLES[key]


class RotaryEmbedding(nn.Module):
    """Applies the rotation to q and k in the neox (rotate-half) layout used by these families.

    `max_position` is the model's (LongRoPE's attention factor depends on it); the table covers
    `num_positions` (the served context, by default all of it)."""

    def __init__(self, head_dim: int, max_position: int, rope: RopeConfig, num_positions: int | None = None) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.rotary_dim = int(head_dim * rope.partial_rotary_factor)
        table = _cos_sin_table(self.rotary_dim, max_position, num_positions or max_position, rope)
        self.register_buffer("cos_sin_cache", table, persistent=False)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q: [tokens, heads, head_dim], k: [tokens, kv_heads, head_dim]."""
        from pagoda.kernels import ops

        return ops.rotary_embedding(positions, q, k, self.cos_sin_cache, self.rotary_dim)
