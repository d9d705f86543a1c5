"""The Mamba-2 mixer: a selective state-space layer in place of attention (Granite 4.0-H, Bamba,
Nemotron-H, Mamba-2).

Its per-sequence memory is not a KV cache that grows with the context but two
fixed-size states (the convolution's last inputs and one [head_dim, state] matrix
per head, kernels/recurrent.py), kept in slots as every recurrent layer keeps them
(engine/layers/recurrent.py).

Tensor parallelism splits the heads; the B and C projections belong to groups of
heads, split with them when the groups divide among the ranks, else each rank
holds its heads' group (`tp % groups == 0`). The gated RMSNorm normalizes per
group, so where a group spans ranks its sum of squares is all-reduced.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from pagoda.engine.attention import AttentionMetadata
from pagoda.engine.distributed import all_reduce, tp_rank, tp_size
from pagoda.engine.layers.linear import ColumnParallelLinear, RowParallelLinear, divide
from pagoda.engine.layers.recurrent import RecurrentMixer
from pagoda.engine.layers.weights import copy_into, read_shard
from pagoda.engine.model_config import MambaConfig
from pagoda.kernels import ops, recurrent


class _Shard:
    """This rank's heads and groups of heads."""

    def __init__(self, cfg: MambaConfig) -> None:
        tp, rank = tp_size(), tp_rank()
        self.heads = divide(cfg.num_heads, tp, "Mamba heads")
        self.first_head = rank * self.heads
        if cfg.num_groups % tp == 0:
            self.groups, self.first_group = cfg.num_groups // tp, rank * (cfg.num_groups // tp)
        elif tp % cfg.num_groups == 0:  # several ranks share a group: each holds its B and C
            self.groups, self.first_group = 1, rank // (tp // cfg.num_groups)
        else:
            raise ValueError(f"Mamba's {cfg.num_groups} groups neither divide nor are divided by "
                             f"tensor_parallel_size {tp}")
        # Whether a group of the gated norm spans several ranks (then its sum of squares is all-reduced).
        self.norm_spans_ranks = tp > cfg.num_groups


class MambaInProjection(ColumnParallelLinear):
    """in_proj: [z | x | B | C | dt] stored as one tensor; each rank takes its heads' z, x and dt rows
    and its groups' B and C rows."""

    part_ids = ("z", "x", "B", "C", "dt")

    def __init__(self, hidden_size: int, cfg: MambaConfig, shard: _Shard) -> None:
        self.cfg, self.shard = cfg, shard
        inner = shard.heads * cfg.head_dim
        groups = shard.groups * cfg.state_size
        self.local = {"z": inner, "x": inner, "B": groups, "C": groups, "dt": shard.heads}
        super().__init__(hidden_size, sum(self.local.values()) * tp_size(), cfg.proj_bias)

    def full_sizes(self) -> dict[str, int]:
        cfg = self.cfg
        return {"z": cfg.inner, "x": cfg.inner, "B": cfg.num_groups * cfg.state_size,
                "C": cfg.num_groups * cfg.state_size, "dt": cfg.num_heads}

    def fused_start(self, part: str) -> int:
        sizes = self.full_sizes()
        return sum(sizes[p] for p in self.part_ids[: self.part_ids.index(part)])

    def rows(self, part: str) -> tuple[int, int, int, int]:
        offset = sum(self.local[p] for p in self.part_ids[: self.part_ids.index(part)])
        if part in ("B", "C"):
            start = self.shard.first_group * self.cfg.state_size
        elif part == "dt":
            start = self.shard.first_head
        else:
            start = self.shard.first_head * self.cfg.head_dim
        return offset, self.local[part], start, self.full_sizes()[part]


class GatedRMSNorm(nn.Module):
    """norm(y * silu(z)) per group of heads (Mamba-2's norm_before_gate=False), or norm(y) * silu(z)
    (`before_gate`), in float32."""

    def __init__(self, cfg: MambaConfig, shard: _Shard) -> None:
        super().__init__()
        self.shard, self.eps = shard, cfg.norm_eps
        self.before_gate = cfg.gate == "norm_then_gate"
        self.group_size = cfg.inner // cfg.num_groups
        self.num_groups = cfg.num_groups
        self.weight = nn.Parameter(torch.ones(shard.heads * cfg.head_dim), requires_grad=False)
        self.weight.weight_loader = self._load
        self._first = shard.first_head * cfg.head_dim

    def _load(self, param: nn.Parameter, src: Any) -> None:
        copy_into(param, read_shard(src, 0, self._first, param.shape[0]))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        t = y.shape[0]
        h = y.float() if self.before_gate else y.float() * F.silu(z.float())
        if self.shard.norm_spans_ranks:  # this rank holds part of one group
            grouped = h.view(t, 1, -1)
            squares = torch.zeros(t, self.num_groups, dtype=torch.float32, device=h.device)
            squares[:, self.shard.first_group] = grouped.pow(2).sum(-1)[:, 0]
            all_reduce(squares)
            mean = squares[:, self.shard.first_group : self.shard.first_group + 1, None] / self.group_size
        else:
            grouped = h.view(t, -1, self.group_size)
            mean = grouped.pow(2).mean(-1, keepdim=True)
        normed = self.weight.float() * (grouped * torch.rsqrt(mean + self.eps)).view(t, -1)
        return (normed * F.silu(z.float()) if self.before_gate else normed).to(z.dtype)


class Mamba2Mixer(RecurrentMixer):
    """in_proj -> causal conv over x, B, C -> selective scan -> gated norm -> out_proj."""

    def __init__(self, hidden_size: int, cfg: MambaConfig) -> None:
        shard = _Shard(cfg)
        in_proj = MambaInProjection(hidden_size, cfg, shard)
        local = in_proj.local
        super().__init__(local["x"] + local["B"] + local["C"], cfg.conv_kernel, cfg.conv_bias, self._load_conv)
        self.cfg, self.shard, self.in_proj = cfg, shard, in_proj
        # Per head: A (as log(-A)), the skip D and the time-step bias.
        for name in ("A_log", "D", "dt_bias"):
            param = nn.Parameter(torch.empty(shard.heads), requires_grad=False)
            param.weight_loader = self._load_heads
            setattr(self, name, param)
        self.norm = GatedRMSNorm(cfg, shard) if cfg.gate != "none" else None
        self.out_proj = RowParallelLinear(cfg.inner, hidden_size,
                                          bias=cfg.proj_bias if cfg.out_bias is None else cfg.out_bias)

    def _load_heads(self, param: nn.Parameter, src: Any) -> None:
        copy_into(param, read_shard(src, 0, self.shard.first_head, self.shard.heads))

    def _load_conv(self, param: nn.Parameter, src: Any) -> None:
        """conv1d's weight [conv_dim, 1, K] (or its bias) holds x, B and C's channels: in_proj's parts."""
        skip = self.in_proj.local["z"]
        for part in ("x", "B", "C"):
            offset, size, start, _ = self.in_proj.rows(part)
            rows = read_shard(src, 0, self.in_proj.fused_start(part) - self.cfg.inner + start, size)
            copy_into(param.data.narrow(0, offset - skip, size), rows.reshape(size, *param.shape[1:]))

    def state_shape(self) -> tuple[int, ...]:
        return self.shard.heads, self.cfg.head_dim, self.cfg.state_size

    def forward(self, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        local = self.in_proj.local
        z, xbc, dt = self.in_proj(x).split([local["z"], self.conv_dim, local["dt"]], dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias.float()).clamp(*self.cfg.time_step_limit)
        y = self.recur(xbc, (dt,), meta).view(x.shape[0], -1)
        gated = (y * F.silu(z.float())).to(z.dtype) if self.norm is None else self.norm(y, z)
        return self.out_proj(gated)

    def _split(self, xbc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Convolved channels -> x [T, H, P], B and C [T, G, N]."""
        local, cfg = self.in_proj.local, self.cfg
        xs, B, C = xbc.split([local["x"], local["B"], local["C"]], dim=-1)
        t = xbc.shape[0]
        return xs.reshape(t, -1, cfg.head_dim), B.reshape(t, -1, cfg.state_size), C.reshape(t, -1, cfg.state_size)

    def step(self, conv: torch.Tensor, inputs: tuple[torch.Tensor, ...], slots: torch.Tensor,
             carried: torch.Tensor) -> torch.Tensor:
        xs, B, C = self._split(conv)
        return ops.ssd_decode_slots(xs, inputs[0], -torch.exp(self.A_log.float()), B, C, self.D.float(), self.state,
                                    slots, carried)

    def chunk(self, conv: torch.Tensor, inputs: tuple[torch.Tensor, ...],
              state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xs, B, C = self._split(conv)
        return recurrent.ssd_prefill(xs, inputs[0], -torch.exp(self.A_log.float()), B, C, self.D.float(), state,
                                     self.cfg.chunk_size)
