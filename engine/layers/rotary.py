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

SUPPORTED_ROPE_SCALING = ("default", "dynamic", "linear", "llama3", "longrope", "proportional", "yarn")


def _inv_freq(rotary_dim: int, rope: RopeConfig, max_position: int, long: bool = False) -> torch.Tensor:
    # float32 throughout, as the reference implementations compute it: a
    # float64 table would be "more exact" yet disagree with every checkpoint's
    # training-time numerics at long positions.
    kind = rope.scaling_type
    theta = rope.theta
    if kind == "dynamic":  # Hunyuan's NTK-alpha: a fixed `alpha` stretches the base, whatever the length
        if rope.scaling.get("alpha") is None:
            raise ValueError("rope scaling 'dynamic' (length-dependent NTK) is not supported; with a fixed alpha it is")
        theta = theta * float(rope.scaling["alpha"]) ** (rotary_dim / (rotary_dim - 2))
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))
    if kind in ("default", "dynamic"):
        return inv_freq
    if kind == "linear":
        return inv_freq / float(rope.scaling["factor"])
    if kind == "llama3":
        return _llama3_scale(inv_freq, rope.scaling)
    if kind == "proportional":  # Gemma 4's global layers: the whole head, its later frequencies zero (unturned)
        turning = int(rope.partial_rotary_factor * rotary_dim // 2)
        inv_freq[turning:] = 0.0
        return inv_freq / float(rope.scaling.get("factor") or 1.0)
    if kind == "yarn":
        return _yarn_scale(inv_freq, rotary_dim, rope, max_position)
    if kind in LONGROPE:  # the short factors, or the long ones (see RotaryEmbedding)
        name = "long_factor" if long else "short_factor"
        factors = torch.tensor(rope.scaling[name], dtype=torch.float32)
        if factors.numel() != inv_freq.numel():
            raise ValueError(f"longrope {name} has {factors.numel()} entries, the rotary dims {inv_freq.numel()}")
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


def _yarn_factor(rope: RopeConfig, max_position: int) -> float:
    """YaRN's context extension: `factor`, else the model's positions over the original (DeepSeek-V3's way)."""
    return float(rope.scaling.get("factor") or max_position / float(rope.scaling["original_max_position_embeddings"]))


def _yarn_scale(inv_freq: torch.Tensor, rotary_dim: int, rope: RopeConfig, max_position: int) -> torch.Tensor:
    """YaRN (Qwen2.5 and Qwen3 past 32k, DeepSeek): frequencies that turn fewer than beta_slow times over
    the original context are interpolated (slowed by `factor`), those that turn more than beta_fast times
    kept, a linear ramp over the dimensions between."""
    s = rope.scaling
    factor, base = _yarn_factor(rope, max_position), rope.theta
    original = float(s["original_max_position_embeddings"])
    beta_fast, beta_slow = float(s.get("beta_fast") or 32), float(s.get("beta_slow") or 1)

    def dim_of(rotations: float) -> float:  # the dimension that turns `rotations` times over the context
        return rotary_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = dim_of(beta_fast), dim_of(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    ramp = ((torch.arange(rotary_dim // 2, dtype=torch.float32) - low) / ((high - low) or 0.001)).clamp(0, 1)
    keep = 1 - ramp  # 1: extrapolate (the original frequency), 0: interpolate
    return inv_freq / factor * (1 - keep) + inv_freq * keep


def yarn_mscale(factor: float, m: float = 1.0) -> float:
    """YaRN's attention temperature for a context extended `factor` times: 0.1 m ln(factor) + 1."""
    return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0


def _attention_factor(rope: RopeConfig, max_position: int) -> float:
    """The scale of cos and sin (on q and k alike) of the context-extending rules, unless the config
    gives it: LongRoPE's sqrt(1 + ln(s) / ln(original context)) for the extension s; YaRN's
    0.1 ln(factor) + 1 (DeepSeek's mscale and mscale_all_dim as a ratio of two such); 1 otherwise."""
    if rope.scaling_type not in (*LONGROPE, "yarn"):
        return 1.0
    if rope.scaling.get("attention_factor") is not None:
        return float(rope.scaling["attention_factor"])
    if rope.scaling_type == "yarn":
        factor = _yarn_factor(rope, max_position)
        m, m_all = rope.scaling.get("mscale"), rope.scaling.get("mscale_all_dim")
        return yarn_mscale(factor, float(m)) / yarn_mscale(factor, float(m_all)) if m and m_all else yarn_mscale(factor)
    original = float(rope.scaling["original_max_position_embeddings"])
    factor = float(rope.scaling.get("factor") or max_position / original)
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))


# Tables by (rotary dims, model positions, table length, rope settings, device); the oldest goes past 8.
_TABLES: dict[tuple[Any, ...], torch.Tensor] = {}


def _cos_sin_table(rotary_dim: int, max_position: int, num_positions: int, rope: RopeConfig) -> torch.Tensor:
    """[num_positions, rotary_dim] cos then sin on the default device (LongRoPE: the short factors' rows,
    then as many of the long factors'), built once per model and device and shared by its layers: at
    128k positions a table is 64 MiB, which every layer holding its own would multiply by the layer count."""
    device = torch.empty(0).device
    key = (rotary_dim, max_position, num_positions, repr(rope), device)
    if key not in _TABLES:
        scale = _attention_factor(rope, max_position)
        tables = []
        for long in (False, True) if rope.scaling_type in LONGROPE else (False,):
            freqs = torch.outer(torch.arange(num_positions, dtype=torch.float32),
                                _inv_freq(rotary_dim, rope, max_position, long))
            tables.append(torch.cat([freqs.cos() * scale, freqs.sin() * scale], dim=-1))
        _TABLES[key] = torch.cat(tables)
        if len(_TABLES) > 8:
            del _TABLES[next(iter(_TABLES))]
    return _TABLES[key]


class RotaryEmbedding(nn.Module):
    """Applies the rotation to q and k in the neox (rotate-half) layout most families use, or the
    gpt-j (interleaved pairs) layout where `interleaved` (GLM).

    `max_position` is the model's (LongRoPE's attention factor depends on it); the table covers
    `num_positions` (the served context, by default all of it). Under LongRoPE it holds the long
    factors' rows after those: the runner offsets by `num_positions` the positions of tokens that
    rotate with them (ModelConfig.longrope_original).

    Multimodal RoPE (Qwen2-VL's `mrope_section`, e.g. [16, 24, 24]): a token has three positions
    (temporal, height, width) and each run of frequencies turns with one of them (Qwen3-VL's
    `mrope_interleaved`: every third frequency with height, the next with width). Positions then come
    as [3, tokens]; where all three are equal (text, every decode) it is plain RoPE, so such steps
    pass [tokens] and take the kernel's usual path (CUDA graphs included)."""

    def __init__(self, head_dim: int, max_position: int, rope: RopeConfig, num_positions: int | None = None,
                 interleaved: bool = False) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.is_neox = not interleaved
        # Proportional RoPE turns only the first `partial_rotary_factor` of the frequencies, yet pairs
        # dimensions across the whole head (i with i + head_dim/2), unlike partial rotary's first dims.
        proportional = rope.scaling_type == "proportional"
        self.rotary_dim = head_dim if proportional else int(head_dim * rope.partial_rotary_factor)
        table = _cos_sin_table(self.rotary_dim, max_position, num_positions or max_position, rope)
        self.register_buffer("cos_sin_cache", table, persistent=False)
        sections = rope.scaling.get("mrope_section")
        streams = None if sections is None else _mrope_streams(sections, self.rotary_dim,
                                                               bool(rope.scaling.get("mrope_interleaved")))
        self.register_buffer("mrope_streams", streams, persistent=False)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q: [tokens, heads, head_dim], k: [tokens, kv_heads, head_dim]; positions [tokens], or [3, tokens]
        with multimodal RoPE."""
        from pagoda.kernels import ops

        table, rows = self.table_rows(positions)
        return ops.rotary_embedding(rows, q, k, table, self.rotary_dim, self.is_neox)

    def table_rows(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos/sin table, each token's row in it): the model's table and the positions themselves; with
        three positions per token, a table of each token's own row and the tokens' indices."""
        if positions.dim() == 1:
            return self.cos_sin_cache, positions
        if self.mrope_streams is None:
            raise ValueError("three positions per token need a model with multimodal RoPE (mrope_section)")
        # Each token's own row: every column taken from the position stream its frequency follows.
        rows = self.cos_sin_cache[positions]  # [3, tokens, rotary_dim]
        streams = self.mrope_streams.expand(1, rows.shape[1], -1)
        table = rows.gather(0, streams)[0]
        return table, torch.arange(table.shape[0], device=table.device)


def _mrope_streams(sections: list[int], rotary_dim: int, interleaved: bool = False) -> torch.Tensor:
    """[1, 1, rotary_dim]: which of the (temporal, height, width) positions each cos and sin column
    turns with; `sections` counts frequencies per stream, in runs or interleaved t, h, w, t, h, w, ...
    (height and width stop after their counts, temporal takes the rest)."""
    if sum(sections) != rotary_dim // 2 or len(sections) != 3:
        raise ValueError(f"mrope_section {sections} must give three counts of the {rotary_dim // 2} frequencies")
    if interleaved:
        j = torch.arange(rotary_dim // 2)
        per_frequency = torch.zeros_like(j)
        for stream in (1, 2):
            per_frequency[(j % 3 == stream) & (j < 3 * sections[stream])] = stream
    else:
        per_frequency = torch.repeat_interleave(torch.arange(3), torch.tensor(sections))
    return torch.cat([per_frequency, per_frequency]).view(1, 1, -1)
