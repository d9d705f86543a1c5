"""The Mamba-2 mixer: a selective state-space layer in place of attention (Granite 4.0-H, Bamba,
Nemotron-H, Mamba-2).

Its per-sequence memory is not a KV cache that grows with the context but two
fixed-size states (kernels/ssm.py), kept in slots: each running sequence holds
one slot (BlockManager assigns it with the sequence's blocks and takes it back
with them), every mixer holds its layer's states of every slot, and a step's
metadata says which slot each sequence reads and writes (`state_slots`). A
sequence whose chunk starts at position 0 (a new prompt, or one recomputed after
preemption) starts from zero states, whatever the slot held before.

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
from pagoda.engine.layers.weights import copy_into, read_shard
from pagoda.engine.model_config import MambaConfig
from pagoda.kernels import ssm


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
    """norm(y * silu(z)) per group of heads (Mamba-2's norm_before_gate=False), in float32."""

    def __init__(self, cfg: MambaConfig, shard: _Shard) -> None:
        super().__init__()
        self.shard, self.eps = shard, cfg.norm_eps
        self.group_size = cfg.inner // cfg.num_groups
        self.num_groups = cfg.num_groups
        self.weight = nn.Parameter(torch.ones(shard.heads * cfg.head_dim), requires_grad=False)
        self.weight.weight_loader = self._load
        self._first = shard.first_head * cfg.head_dim

    def _load(self, param: nn.Parameter, src: Any) -> None:
        copy_into(param, read_shard(src, 0, self._first, param.shape[0]))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        t = y.shape[0]
        h = y.float() * F.silu(z.float())
        if self.shard.norm_spans_ranks:  # this rank holds part of one group
            grouped = h.view(t, 1, -1)
            squares = torch.zeros(t, self.num_groups, dtype=torch.float32, device=h.device)
            squares[:, self.shard.first_group] = grouped.pow(2).sum(-1)[:, 0]
            all_reduce(squares)
            mean = squares[:, self.shard.first_group : self.shard.first_group + 1, None] / self.group_size
        else:
            grouped = h.view(t, -1, self.group_size)
            mean = grouped.pow(2).mean(-1, keepdim=True)
        normed = (grouped * torch.rsqrt(mean + self.eps)).view(t, -1)
        return (self.weight.float() * normed).to(z.dtype)


class Mamba2Mixer(nn.Module):
    """in_proj -> causal conv over x, B, C -> selective scan -> gated norm -> out_proj."""

    def __init__(self, hidden_size: int, cfg: MambaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.shard = shard = _Shard(cfg)
        self.in_proj = MambaInProjection(hidden_size, cfg, shard)
        local = self.in_proj.local
        self.conv_dim = local["x"] + local["B"] + local["C"]
        # The depthwise convolution's weight [conv_dim, K] (checkpoints: [conv_dim, 1, K]) and bias.
        self.conv1d = nn.Module()
        self.conv1d.weight = nn.Parameter(torch.empty(self.conv_dim, cfg.conv_kernel), requires_grad=False)
        self.conv1d.bias = nn.Parameter(torch.empty(self.conv_dim), requires_grad=False) if cfg.conv_bias else None
        for param in self.conv1d.parameters():
            param.weight_loader = self._load_conv
        # Per head: A (as log(-A)), the skip D and the time-step bias.
        for name in ("A_log", "D", "dt_bias"):
            param = nn.Parameter(torch.empty(shard.heads), requires_grad=False)
            param.weight_loader = self._load_heads
            setattr(self, name, param)
        self.norm = GatedRMSNorm(cfg, shard)
        self.out_proj = RowParallelLinear(cfg.inner, hidden_size, bias=cfg.proj_bias)
        # [slots, conv_dim, kernel - 1] and [slots, heads, head_dim, state]: bound by bind_recurrent_state.
        self.conv_state = torch.empty(0)
        self.ssm_state = torch.empty(0)

    def _load_heads(self, param: nn.Parameter, src: Any) -> None:
        copy_into(param, read_shard(src, 0, self.shard.first_head, self.shard.heads))

    def _load_conv(self, param: nn.Parameter, src: Any) -> None:
        """conv1d's weight [conv_dim, 1, K] (or its bias) holds x, B and C's channels: in_proj's parts."""
        skip = self.in_proj.local["z"]
        for part in ("x", "B", "C"):
            offset, size, start, _ = self.in_proj.rows(part)
            rows = read_shard(src, 0, self.in_proj.fused_start(part) - self.cfg.inner + start, size)
            copy_into(param.data.narrow(0, offset - skip, size), rows.reshape(size, *param.shape[1:]))

    def state_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per slot: the convolution's last inputs and the scan's state."""
        return (self.conv_dim, self.cfg.conv_kernel - 1), (self.shard.heads, self.cfg.head_dim, self.cfg.state_size)

    def forward(self, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        cfg, local = self.cfg, self.in_proj.local
        z, xbc, dt = self.in_proj(x).split([local["z"], self.conv_dim, local["dt"]], dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias.float()).clamp(*cfg.time_step_limit)
        A = -torch.exp(self.A_log.float())
        y = torch.empty(x.shape[0], self.shard.heads, cfg.head_dim, dtype=torch.float32, device=x.device)
        decodes = meta.num_decodes
        if decodes:
            y[:decodes] = self._decode(xbc[:decodes], dt[:decodes], A, meta)
        token = decodes
        for i in range(decodes, meta.num_seqs):
            n = meta.query_lens_host[i]
            fresh = meta.seq_lens_host[i] == n
            y[token : token + n] = self._prefill(xbc[token : token + n], dt[token : token + n], A,
                                                 meta.state_slots_host[i], fresh)
            token += n
        return self.out_proj(self.norm(y.view(x.shape[0], -1), z))

    def _split(self, xbc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Convolved channels -> x [T, H, P], B and C [T, G, N]."""
        local, cfg = self.in_proj.local, self.cfg
        xs, B, C = xbc.split([local["x"], local["B"], local["C"]], dim=-1)
        t = xbc.shape[0]
        return xs.reshape(t, -1, cfg.head_dim), B.reshape(t, -1, cfg.state_size), C.reshape(t, -1, cfg.state_size)

    def _decode(self, xbc: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """One token for each of the step's first sequences, their states read and written by slot."""
        slots = meta.state_slots[: xbc.shape[0]]
        # A sequence at its first token (a one-token prompt) starts from zero states, as do graph padding rows.
        carried = (meta.seq_lens[: xbc.shape[0]] > 1)[:, None, None]
        conv, conv_state = ssm.conv_decode(xbc, self.conv_state[slots] * carried, self.conv1d.weight, self.conv1d.bias)
        self.conv_state.index_copy_(0, slots, conv_state.to(self.conv_state.dtype))
        xs, B, C = self._split(conv)
        y, state = ssm.ssd_decode(xs, dt, A, B, C, self.D.float(), self.ssm_state[slots].float() * carried[..., None])
        self.ssm_state.index_copy_(0, slots, state.to(self.ssm_state.dtype))
        return y

    def _prefill(self, xbc: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, slot: int, fresh: bool) -> torch.Tensor:
        """One sequence's prompt chunk, from its slot's states (zeros where the prompt starts)."""
        conv_state, state = self.conv_state[slot], self.ssm_state[slot].float()
        if fresh:
            conv_state, state = torch.zeros_like(conv_state), torch.zeros_like(state)
        conv, conv_state = ssm.conv_prefill(xbc, conv_state, self.conv1d.weight, self.conv1d.bias)
        self.conv_state[slot] = conv_state
        xs, B, C = self._split(conv)
        y, state = ssm.ssd_prefill(xs, dt, A, B, C, self.D.float(), state, self.cfg.chunk_size)
        self.ssm_state[slot] = state.to(self.ssm_state.dtype)
        return y


def mamba_mixers(model: nn.Module) -> list[Mamba2Mixer]:
    return [m for m in model.modules() if isinstance(m, Mamba2Mixer)]


def state_bytes(model: nn.Module, conv_dtype: torch.dtype, ssm_dtype: torch.dtype) -> int:
    """Bytes one state slot takes over every mixer of the model, on this rank."""
    total = 0
    for mixer in mamba_mixers(model):
        conv, scan = mixer.state_shapes()
        total += torch.Size(conv).numel() * conv_dtype.itemsize + torch.Size(scan).numel() * ssm_dtype.itemsize
    return total


def bind_recurrent_state(model: nn.Module, num_slots: int, conv_dtype: torch.dtype, ssm_dtype: torch.dtype,
                         device: torch.device) -> None:
    """Gives every mixer its states for `num_slots` slots."""
    for mixer in mamba_mixers(model):
        conv, scan = mixer.state_shapes()
        mixer.conv_state = torch.zeros(num_slots, *conv, dtype=conv_dtype, device=device)
        mixer.ssm_state = torch.zeros(num_slots, *scan, dtype=ssm_dtype, device=device)
