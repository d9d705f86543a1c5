"""Gated DeltaNet: the linear-attention layers of Qwen3.5, Qwen3-Next (GroupedGatedDeltaNet) and OLMo Hybrid.

Each value head keeps a [key dim, value dim] state that decays by a learned,
input-dependent gate and is corrected toward each new value along its key (the
delta rule, kernels/recurrent.py); q, k and v first pass a short causal
convolution. Its states live in slots as every recurrent layer's do
(engine/layers/recurrent.py). The output is RMS-normalized per head, gated by
silu(z), and projected back.

Tensor parallelism splits the key heads, each rank keeping the value heads they
serve (value heads follow their key head in the checkpoint's order).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from pagoda.engine.attention import AttentionMetadata
from pagoda.engine.distributed import tp_rank, tp_size
from pagoda.engine.layers.linear import ColumnParallelLinear, MergedColumnParallelLinear, RowParallelLinear, divide
from pagoda.engine.layers.recurrent import RecurrentMixer
from pagoda.engine.layers.weights import copy_into, read_shard
from pagoda.engine.model_config import LinearAttentionConfig
from pagoda.kernels import ops, recurrent

# Tokens per chunk of the delta rule's chunked form (its triangular solve is chunk x chunk per head).
CHUNK_SIZE = 64


class GatedDeltaNet(RecurrentMixer):
    """in_proj_qkv -> causal conv -> gated delta rule -> per-head RMSNorm gated by silu(z) -> out_proj;
    in_proj_zba holds z, b (beta = sigmoid(b)) and a (the decay gate's input), checkpoints' in_proj_z,
    in_proj_b and in_proj_a."""

    def __init__(self, hidden_size: int, cfg: LinearAttentionConfig, beta_scale: float = 1.0) -> None:
        tp = tp_size()
        key_heads = divide(cfg.num_key_heads, tp, "linear-attention key heads")
        value_heads = divide(cfg.num_value_heads, tp, "linear-attention value heads")
        key_dim, value_dim = cfg.num_key_heads * cfg.key_head_dim, cfg.num_value_heads * cfg.value_head_dim
        self.parts = [key_heads * cfg.key_head_dim] * 2 + [value_heads * cfg.value_head_dim]
        super().__init__(sum(self.parts), cfg.conv_kernel, False, self._load_conv)
        self.cfg, self.key_heads, self.value_heads = cfg, key_heads, value_heads
        # beta = sigmoid(b) times this: 2 lets the update overshoot (OLMo Hybrid's allow_neg_eigval).
        self.beta_scale = beta_scale
        self.make_projections(hidden_size, key_dim, value_dim)
        for name in ("A_log", "dt_bias"):
            param = nn.Parameter(torch.empty(value_heads), requires_grad=False)
            param.weight_loader = self._load_heads
            setattr(self, name, param)
        self.norm = nn.Module()  # one weight for every head: the norm is per head
        self.norm.weight = nn.Parameter(torch.ones(cfg.value_head_dim), requires_grad=False)
        self.out_proj = RowParallelLinear(value_dim, hidden_size)

    def make_projections(self, hidden_size: int, key_dim: int, value_dim: int) -> None:
        self.in_proj_qkv = MergedColumnParallelLinear(hidden_size, [key_dim, key_dim, value_dim])
        self.in_proj_zba = MergedColumnParallelLinear(hidden_size, [value_dim, self.cfg.num_value_heads,
                                                                    self.cfg.num_value_heads])

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q|k|v [T, conv_dim], z [T, value heads, value dim], b, a [T, value heads]), this rank's."""
        z, b, a = self.in_proj_zba(x).split([self.parts[2], self.value_heads, self.value_heads], dim=-1)
        return self.in_proj_qkv(x), z.reshape(x.shape[0], -1, self.cfg.value_head_dim), b, a

    def _load_heads(self, param: nn.Parameter, src: Any) -> None:
        """This rank's share of a per-head (or, KDA's, per-channel) vector: its rows of the checkpoint's."""
        copy_into(param, read_shard(src, 0, tp_rank() * param.shape[0], param.shape[0]))

    def _load_conv(self, param: nn.Parameter, src: Any, part: int | None = None) -> None:
        """conv1d's weight [conv_dim, 1, K] holds q, k and v's channels, each part's split by heads; `part`:
        a checkpoint that stores each part's apart (OLMo Hybrid's q_conv1d, k_conv1d, v_conv1d)."""
        cfg = self.cfg
        full = [cfg.num_key_heads * cfg.key_head_dim] * 2 + [cfg.num_value_heads * cfg.value_head_dim]
        for index, size in enumerate(self.parts):
            if part is not None and index != part:
                continue
            start = (0 if part is not None else sum(full[:index])) + tp_rank() * size
            rows = read_shard(src, 0, start, size)
            copy_into(param.data.narrow(0, sum(self.parts[:index]), size), rows.reshape(size, *param.shape[1:]))

    def state_shape(self) -> tuple[int, ...]:
        return self.value_heads, self.cfg.key_head_dim, self.cfg.value_head_dim

    def forward(self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """(positions unused: the recurrence is ordered by itself.)"""
        qkv, z, b, a = self.project(x)
        g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias.float())
        # [T, heads, value dim], rounded to the model's dtype as transformers' kernels return it
        beta = b.float().sigmoid() if self.beta_scale == 1.0 else b.float().sigmoid() * self.beta_scale
        y = self.recur(qkv, (g, beta), meta).to(x.dtype).float()
        normed = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.cfg.norm_eps)
        normed = (self.norm.weight * normed.to(x.dtype)).float() * F.silu(z.float())
        return self.out_proj(normed.to(x.dtype).view(x.shape[0], -1))

    def _split(self, conv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = conv.split(self.parts, dim=-1)
        t, cfg = conv.shape[0], self.cfg
        return (q.reshape(t, -1, cfg.key_head_dim), k.reshape(t, -1, cfg.key_head_dim),
                v.reshape(t, -1, cfg.value_head_dim))

    def step(self, conv: torch.Tensor, inputs: tuple[torch.Tensor, ...], slots: torch.Tensor,
             carried: torch.Tensor) -> torch.Tensor:
        return ops.gated_delta_decode_slots(*self._split(conv), *inputs, self.state, slots, carried)

    def chunk(self, conv: torch.Tensor, inputs: tuple[torch.Tensor, ...],
              state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return recurrent.gated_delta_prefill(*self._split(conv), *inputs, state, CHUNK_SIZE)


class GroupedGatedDeltaNet(GatedDeltaNet):
    """Qwen3-Next's layout of the same layer: in_proj_qkvz and in_proj_ba store their rows by key head, each
    key head's q, k, its value heads' v and z (and b, a) together, so a rank's key heads are one run of rows
    of each; the outputs are regrouped into q|k|v and z, b, a."""

    def make_projections(self, hidden_size: int, key_dim: int, value_dim: int) -> None:
        self.in_proj_qkvz = ColumnParallelLinear(hidden_size, 2 * key_dim + 2 * value_dim)
        self.in_proj_ba = ColumnParallelLinear(hidden_size, 2 * self.cfg.num_value_heads)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        t, cfg = x.shape[0], self.cfg
        per_key = self.value_heads // self.key_heads
        q, k, v, z = self.in_proj_qkvz(x).view(t, self.key_heads, -1).split(
            [cfg.key_head_dim, cfg.key_head_dim, per_key * cfg.value_head_dim, per_key * cfg.value_head_dim], dim=-1)
        b, a = self.in_proj_ba(x).view(t, self.key_heads, -1).split(per_key, dim=-1)
        qkv = torch.cat([q.reshape(t, -1), k.reshape(t, -1), v.reshape(t, -1)], dim=-1)
        return qkv, z.reshape(t, -1, cfg.value_head_dim), b.reshape(t, -1), a.reshape(t, -1)
