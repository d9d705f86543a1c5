"""Block-wise FP8 weights for the linear layers: the parameters, and which blocks a shard owns.

A quantized projection keeps its weight as float8_e4m3fn (one byte per
weight, half of bf16: a decode step reads half the bytes) plus one fp32
scale per block of the checkpoint's `weight_block_size`. Our layers fuse
projections (q/k/v, gate/up) and split them across tensor-parallel ranks,
so a part's rows, and a rank's rows or columns, must start on a block
boundary for its scales to be a whole sub-grid of the checkpoint's; shapes
that break that are refused at load rather than served with wrong scales.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pagoda.kernels import ops

FP8_DTYPE = torch.float8_e4m3fn
# The scale blocks of weights quantized at load (`quantization="fp8"`): those of Qwen3-*-FP8 and DeepSeek-V3.
ONLINE_BLOCK = (128, 128)
FP8_MAX = 448.0  # the largest float8_e4m3fn value


def quantize_fp8_blocks(weight: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(FP8 weight, fp32 weight_scale_inv): each block scaled so its largest entry maps to FP8's largest."""
    rows, cols = weight.shape
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
    here and read from `start` of `full` in the checkpoint; ValueError where a block would straddle."""
    if offset % block or start % block or (size % block and start + size != full):
        raise ValueError(f"FP8 {what} of {size} at {start} (placed at {offset}) does not fall on blocks of {block}; "
                         "this tensor-parallel size splits a scale block")
    return offset // block, -(-size // block), start // block



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
