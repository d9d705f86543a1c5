"""Tensor-parallel process group state and the collectives the layers use.

With one rank every collective is the identity, so the model code is written
once for any tensor_parallel_size and pays nothing when it is 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class _TPState:
    rank: int = 0
    size: int = 1
    group: dist.ProcessGroup | None = None
    expert_parallel: bool = False


_state = _TPState()


def init_tensor_parallel(rank: int, size: int, group: dist.ProcessGroup | None = None,
                         expert_parallel: bool = False) -> None:
    """Records this process's place in the tensor-parallel group (called by each worker), and whether
    MoE layers spread whole experts over the ranks rather than splitting each one."""
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} outside tensor-parallel size {size}")
    _state.rank, _state.size, _state.group, _state.expert_parallel = rank, size, group, expert_parallel


def tp_rank() -> int:
    return _state.rank


def tp_size() -> int:
    return _state.size


def expert_parallel() -> bool:
    """Whether this rank holds E / tp whole experts of each MoE layer (vLLM's --enable-expert-parallel)."""
    return _state.expert_parallel and _state.size > 1


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sums partial results of row-parallel layers across ranks, in place."""
    if _state.size > 1:
        dist.all_reduce(x, group=_state.group)
    return x


def all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Concatenates per-rank shards (e.g. vocabulary-parallel logits) along `dim`."""
    if _state.size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(_state.size)]
    dist.all_gather(parts, x.contiguous(), group=_state.group)
    return torch.cat(parts, dim=dim)


def agree_min(value: int, device: torch.device) -> int:
    """The smallest of every rank's value (e.g. KV blocks that fit), so all ranks size alike."""
    if _state.size == 1:
        return value
    t = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=_state.group)
    return int(t.item())
