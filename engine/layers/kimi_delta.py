"""Kimi Delta Attention (KDA): Kimi Linear's linear-attention layers.

Gated DeltaNet (engine/layers/gated_delta.py) with a decay per key channel instead of per head: each
row of a head's [key dim, value dim] state fades at its own rate, the gate coming through a low-rank
projection (f_a_proj to one head's width, f_b_proj to every head's) plus a per-channel bias, softplus,
times the head's -exp(A_log). q, k and v have the same heads (no grouping); the output is normalized
per head in fp32 and gated by sigmoid of another low-rank projection (g_a_proj, g_b_proj).

Tensor parallelism splits the heads; the low-rank down projections are every rank's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from pagoda.engine.attention import AttentionMetadata
from pagoda.engine.distributed import tp_rank
from pagoda.engine.layers.gated_delta import GatedDeltaNet
from pagoda.engine.layers.linear import ColumnParallelLinear, MergedColumnParallelLinear, ReplicatedProjection
from pagoda.engine.layers.weights import copy_into, read_full
from pagoda.engine.model_config import LinearAttentionConfig
from pagoda.kernels import recurrent

# Tokens per chunk of the per-channel delta rule (its relative decays are heads x chunk x chunk x key dim).
CHUNK_SIZE = 32


class KimiDeltaAttention(GatedDeltaNet):
    """in_proj_qkv -> causal conv -> the delta rule with per-channel decay -> fp32 RMSNorm gated by
    sigmoid(g) -> out_proj (checkpoints: q/k/v_proj, q/k/v_conv1d, o_norm, o_proj). Decodes run Gated
    DeltaNet's kernel, which takes a decay per channel ([S, H, K]) as well as per head."""

    def __init__(self, hidden_size: int, cfg: LinearAttentionConfig) -> None:
        super().__init__(hidden_size, cfg)
        width = self.value_heads * cfg.key_head_dim
        self.dt_bias = nn.Parameter(torch.empty(width, dtype=torch.float32), requires_grad=False)
        self.dt_bias.weight_loader = self._load_heads
        self.A_log.weight_loader = self._load_head_rates
        self.norm.weight = nn.Parameter(torch.ones(cfg.value_head_dim, dtype=torch.float32), requires_grad=False)

    def make_projections(self, hidden_size: int, key_dim: int, value_dim: int) -> None:
        head = self.cfg.key_head_dim
        self.in_proj_qkv = MergedColumnParallelLinear(hidden_size, [key_dim, key_dim, value_dim])
        self.f_a_proj = ReplicatedProjection(hidden_size, head)
        self.f_b_proj = ColumnParallelLinear(head, key_dim)
        self.b_proj = ColumnParallelLinear(hidden_size, self.cfg.num_value_heads)
        self.g_a_proj = ReplicatedProjection(hidden_size, self.cfg.value_head_dim)
        self.g_b_proj = ColumnParallelLinear(self.cfg.value_head_dim, value_dim)

    def _load_head_rates(self, param: nn.Parameter, src: Any) -> None:
        """A_log, stored [1, 1, heads, 1]: this rank's heads."""
        rates = read_full(src).reshape(-1)
        copy_into(param, rates[tp_rank() * self.value_heads : (tp_rank() + 1) * self.value_heads])

    def forward(self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """(positions unused: the recurrence is ordered by itself.)"""
        t, head = x.shape[0], self.cfg.key_head_dim
        gate = self.f_b_proj(self.f_a_proj(x)).float() + self.dt_bias.float()
        g = -self.A_log.float().exp()[:, None] * F.softplus(gate.view(t, self.value_heads, head))
        beta = torch.sigmoid(self.b_proj(x).float())
        # [T, heads, value dim], rounded to the model's dtype as transformers' kernels return it
        y = self.recur(self.in_proj_qkv(x), (g, beta), meta).to(x.dtype).float()
        normed = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.cfg.norm_eps) * self.norm.weight
        out_gate = self.g_b_proj(self.g_a_proj(x)).view(t, self.value_heads, -1).float()
        return self.out_proj((normed * torch.sigmoid(out_gate)).to(x.dtype).view(t, -1))

    def chunk(self, conv: torch.Tensor, inputs: tuple[torch.Tensor, ...],
              state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return recurrent.kda_prefill(*self._split(conv), *inputs, state, CHUNK_SIZE)
