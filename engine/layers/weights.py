"""Reading a rank's shard of a checkpoint tensor.

The loader hands layers either a full tensor or a lazy safetensors slice; a
layer asks only for the rows or columns it owns, so with tensor parallelism a
rank never reads the other ranks' shards from disk.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class WeightSource(Protocol):
    """A full tensor or a lazy safetensors slice (`safe_open(...).get_slice(name)`)."""

    def __getitem__(self, index: Any) -> torch.Tensor: ...


def source_shape(src: Any) -> tuple[int, ...]:
    return tuple(src.shape) if isinstance(src, torch.Tensor) else tuple(src.get_shape())


def read_shard(src: Any, dim: int, start: int, size: int) -> torch.Tensor:
    """Reads `size` entries from `start` along `dim` (all of it for other dims)."""
    index = [slice(None)] * len(source_shape(src))
    index[dim] = slice(start, start + size)
    return src[tuple(index)]


def read_full(src: Any) -> torch.Tensor:
    if isinstance(src, torch.Tensor):
        return src
    return src[:] if source_shape(src) else src[()]  # a scalar (a per-tensor scale) has no dimension to slice


def copy_into(param: torch.Tensor, loaded: torch.Tensor) -> None:
    """Copies with a shape check that names both shapes, casting to the parameter's dtype."""
    if tuple(param.shape) != tuple(loaded.shape):
        raise ValueError(f"checkpoint tensor of shape {tuple(loaded.shape)} does not fit parameter {tuple(param.shape)}")
    param.data.copy_(loaded)


def default_weight_loader(param: torch.nn.Parameter, src: Any) -> None:
    copy_into(param, read_full(src))
