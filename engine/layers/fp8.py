"""Block-wise FP8 weights for the linear layers: the parameters, and which blocks a shard owns.

A quantized projection keeps its weight as float8_e4m3fn (one byte per
weight, half of bf16: a decode step reads half the bytes) plus one fp32
scale per block of the checkpoint's `weight_block_size`. Our layers fuse
projections (q/k/v, gate/up) and split them across tensor-parallel ranks,
so a part's rows, and a rank's rows or columns, must start on a block
boundary for its scales to be a whole sub-grid of the checkpoint's; shapes
that break that are refused at load rather than served with wrong scales.

Per-channel scales (compressed-tensors' FP8-dynamic checkpoints) are blocks of one row by
`WHOLE` columns, and per-tensor scales (vLLM's original `fp8` checkpoints, and
compressed-tensors' `tensor` strategy) are read into that grid too, each part of a fused
projection filling its rows with its own scale: one kernel serves all three.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pagoda.engine.layers.weights import read_full, read_shard, source_shape
from pagoda.kernels import ops

FP8_DTYPE = torch.float8_e4m3fn
# The scale blocks of weights quantized at load (`quantization="fp8"`): those of Qwen3-*-FP8 and DeepSeek-V3.
ONLINE_BLOCK = (128, 128)
FP8_MAX = 448.0  # the largest float8_e4m3fn value
# A scale block dimension spanning a whole weight, however it is split: per-channel scales are (1, WHOLE) blocks.
WHOLE = 1 << 30


def quantize_fp8_blocks(weight: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(FP8 weight, fp32 weight_scale_inv): each block scaled so its largest entry maps to FP8's largest."""
    rows, cols = weight.shape
    block = (min(block[0], rows), min(block[1], cols))  # a block longer than the weight covers it
    grid = (-(-rows // block[0]), -(-cols // block[1]))
    padded = torch.zeros(grid[0] * block[0], grid[1] * block[1], device=weight.device)
    padded[:rows, :cols] = weight.float()
    tiles = padded.view(grid[0], block[0], grid[1], block[1])
    scale = (tiles.abs().amax(dim=(1, 3)) / FP8_MAX).clamp_min(1e-12)
    quantized = (tiles / scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).view_as(padded)[:rows, :cols]
    return quantized.to(FP8_DTYPE).contiguous(), scale


def fp8_weight(like: nn.Parameter, loader: Callable[..., None]) -> nn.Parameter:
    """An FP8 parameter of `like`'s shape and device, loaded by `loader`."""
    param = nn.Parameter(torch.empty(like.shape, dtype=FP8_DTYPE, device=like.device), requires_grad=False)
    param.weight_loader = loader
    return param


def scale_grid(weight: nn.Parameter, block: tuple[int, int], loader: Callable[..., None]) -> nn.Parameter:
    """The fp32 `weight_scale_inv` of a weight (or of each of a stack of experts' weights):
    one entry per (possibly partial) block."""
    *experts, rows, cols = weight.shape
    shape = (*experts, -(-rows // block[0]), -(-cols // block[1]))
    param = nn.Parameter(torch.empty(shape, dtype=torch.float32, device=weight.device), requires_grad=False)
    param.weight_loader = loader
    return param


def block_span(offset: int, size: int, start: int, full: int, block: int, what: str) -> tuple[int, int, int]:
    """(first block here, blocks, first block in the checkpoint) of `size` entries placed at `offset`
    here and read from `start` of `full` in the checkpoint; ValueError where a block would straddle.
    A block as long as the whole dimension is every rank's."""
    whole = block >= full
    if offset % block or (not whole and (start % block or (size % block and start + size != full))):
        raise ValueError(f"FP8 {what} of {size} at {start} (placed at {offset}) does not fall on blocks of {block}; "
                         "this tensor-parallel size splits a scale block")
    return offset // block, 1 if whole else -(-size // block), 0 if whole else start // block


def read_scales(src: Any, dim: int, start: int, size: int, shape: tuple[int, ...]) -> torch.Tensor:
    """`size` rows (dim 0) or columns (dim 1) of a checkpoint's scale grid from `start`, for a part of
    `shape`; a per-tensor scale (one value) fills the whole part."""
    if math.prod(source_shape(src)) == 1:
        return read_full(src).reshape(()).expand(shape)
    return read_shard(src, dim, start, size)


class Fp8Capable:
    """What a linear layer needs to hold its weight as FP8: `use_fp8` swaps the parameters
    (the layer's own `weight_loader` and `scale_loader` place checkpoint shards), and
    `project` is x @ W^T (+ bias) either way, dequantizing inside the GEMM on GPU."""

    weight: nn.Parameter
    weight_loader: Callable[..., None]
    scale_loader: Callable[..., None]
    # (rows, columns) of a scale block once `use_fp8` ran; None: a plain weight.
    fp8_block: tuple[int, int] | None = None

    def use_fp8(self, block: tuple[int, int]) -> None:
        self.fp8_block = block
        self.weight = fp8_weight(self.weight, self.weight_loader)
        self.weight_scale_inv = scale_grid(self.weight, block, self.scale_loader)

    def quantize_loaded(self, block: tuple[int, int]) -> None:
        """Replaces the loaded full-precision weight by its FP8 blocks (FP8 at load, from a bf16 checkpoint)."""
        weight, scale = quantize_fp8_blocks(self.weight.data, block)
        self.fp8_block = block
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.weight_scale_inv = nn.Parameter(scale, requires_grad=False)

    def project(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.fp8_block is None:
            return nn.functional.linear(x, self.weight, bias)
        return ops.fp8_block_linear(x, self.weight, self.weight_scale_inv, self.fp8_block, bias)
