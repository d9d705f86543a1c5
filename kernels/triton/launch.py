"""Host-side helpers shared by the kernel wrappers: block sizes and launch facts."""

from __future__ import annotations

import functools

import torch
import triton


# The widest (padded) head dim whose attention tiles keep their usual sizes; wider ones (DeepSeek's
# latent of 576, padded to 1024) take smaller key tiles over more warps to fit sm_90's registers
# and shared memory (tests/kernels/sm90.py checks both).
WIDEST_FULL_TILE_DIM = 256


def block_for(n: int, minimum: int = 1) -> int:
    """The power-of-two tile that covers n elements (Triton tiles must be powers of two)."""
    return max(minimum, triton.next_power_of_2(n))


def key_tile(block_n: int) -> int:
    """An attention kernel's key tile, checked: it is the reduction extent of the p @ v dot, and compiled
    tl.dot takes no extent under 16 (the interpreter takes any, so the CPU suite alone would not say)."""
    if block_n < 16 or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two of at least 16, got {block_n}")
    return block_n


def interpreting() -> bool:
    """True when kernels run under TRITON_INTERPRET (numpy on the CPU), as in the CPU test suite."""
    return bool(triton.knobs.runtime.interpret)


def exact_dot(dtype: torch.dtype) -> bool:
    """Whether tl.dot must take fp32 operands at full (IEEE) precision.

    fp32 models need it: Triton's default for an fp32 dot is TF32 (10-bit
    mantissa), far outside fp32 tolerances. The interpreter needs it too: it
    emulates bf16 as raw 16-bit integers in numpy and returns garbage from a
    bf16 dot, whereas an fp32 dot of bf16 values is exact (every bf16 product
    fits in fp32), so the interpreted result is the tensor-core result up to
    summation order.
    """
    return dtype == torch.float32 or interpreting()


@functools.cache
def num_sms(device_index: int) -> int:
    """Streaming multiprocessors of a CUDA device: the unit of parallelism a grid must fill."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def as_rows(x: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """x as [rows, width] (default: its last dim) with unit stride along the rows; copies only when it must."""
    x2 = x.reshape(-1, x.shape[-1] if width is None else width)
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def as_3d(x: torch.Tensor) -> torch.Tensor:
    """x as a [outer, inner, last dim] view with unit stride along the last dim; copies only when unavoidable.

    Kernels index rows by two strides instead of requiring contiguity: the
    models hand over views of fused projections (q and k are slices of the
    qkv output, reshaped to heads), whose tokens are strided but whose heads
    are evenly spaced. Copying those would add a full read and write.
    """
    if x.stride(-1) != 1:
        x = x.contiguous()
    if x.dim() == 1:
        return x.view(1, 1, -1)
    if x.dim() == 2:
        return x.unsqueeze(1)
    if x.dim() == 3:
        return x
    return x.reshape(-1, x.shape[-2], x.shape[-1])
