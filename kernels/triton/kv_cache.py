"""Write each new token's K and V into its slot of the paged cache.

One program per token moves that token's [Hkv, D] for K and for V: the
minimum traffic (read once, write once), with the slot looked up once. An FP8 cache
(vLLM's kv_cache_dtype fp8) gets each value saturated to its range and
rounded to nearest. Slot -1 marks padding (CUDA-graph batches are padded to a captured size) and is
skipped, so padded rows never touch the cache.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from pagoda.kernels.reference import cache_limit
from pagoda.kernels.triton.launch import block_for


@functools.cache
def fp8_grid(dtype: torch.dtype) -> tuple[int, int]:
    """(mantissa bits, smallest normal exponent) of an FP8 cache dtype, (0, 0) for any other."""
    if not cache_limit(dtype):
        return 0, 0
    info = torch.finfo(dtype)
    return round(-math.log2(info.eps)), round(math.log2(info.smallest_normal))


@triton.jit
def _round_to_fp8(x, MANTISSA: tl.constexpr, MIN_EXP: tl.constexpr):
    """x (fp32, within the format's range) rounded to nearest-even on the FP8 grid of MANTISSA bits and
    smallest normal exponent MIN_EXP, so that the cast after it is exact. Rounding here rather than in
    the cast keeps one definition on every backend: Triton's interpreter drops the carry when a cast
    rounds the mantissa up into the next power of two (127 became 64)."""
    DROP: tl.constexpr = 23 - MANTISSA
    bits = x.to(tl.int32, bitcast=True)
    bits = (bits + ((1 << (DROP - 1)) - 1) + ((bits >> DROP) & 1)) & ~((1 << DROP) - 1)
    normal = bits.to(tl.float32, bitcast=True)
    # Below the smallest normal the grid is uniform: round x / step with fp32's own rounding.
    step = tl.exp2((MIN_EXP - MANTISSA) * 1.0)
    magic = 12582912.0  # 1.5 * 2 ** 23: adding and removing it rounds to an integer
    subnormal = ((x / step + magic) - magic) * step
    return tl.where(tl.abs(x) < tl.exp2(MIN_EXP * 1.0), subnormal, normal)


@triton.jit
def to_cache_values(x, LIMIT: tl.constexpr, MANTISSA: tl.constexpr, MIN_EXP: tl.constexpr):
    """x as a cache of that FP8 format (MANTISSA > 0, from fp8_grid) holds it: saturated to its range (a
    cast beyond it gives NaN), then rounded; any other cache takes x as it is (in fp32: the caller casts)."""
    x = x.to(tl.float32)
    if MANTISSA:
        x = _round_to_fp8(tl.clamp(x, -LIMIT, LIMIT), MANTISSA, MIN_EXP)
    return x


@triton.jit
def _store_kv_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_cb, stride_ct, stride_ch, block_size, num_heads, head_dim,
    LIMIT: tl.constexpr, MANTISSA: tl.constexpr, MIN_EXP: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, BLOCK_D)[None, :]
    if slot >= 0:
        mask = (heads < num_heads) & (dims < head_dim)
        dst = (slot // block_size) * stride_cb + (slot % block_size) * stride_ct + heads * stride_ch + dims
        k = tl.load(k_ptr + t * stride_kt + heads * stride_kh + dims, mask=mask)
        v = tl.load(v_ptr + t * stride_vt + heads * stride_vh + dims, mask=mask)
        tl.store(k_cache_ptr + dst, to_cache_values(k, LIMIT, MANTISSA, MIN_EXP).to(k_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(v_cache_ptr + dst, to_cache_values(v, LIMIT, MANTISSA, MIN_EXP).to(v_cache_ptr.dtype.element_ty), mask=mask)


def check_cache_pair(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    """The store kernels address K and V with one set of strides, elements of a head side by side."""
    if k_cache.stride() != v_cache.stride() or k_cache.stride(-1) != 1:
        raise ValueError("K and V caches must share one layout with contiguous head dims")


def store_kv_cache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """k, v: [T, Hkv, D] (rows may be strided); caches: [num_blocks, block_size, Hkv, D]; slot -1 = skip."""
    check_cache_pair(k_cache, v_cache)
    if k.stride(-1) != 1 or v.stride(-1) != 1:
        k, v = k.contiguous(), v.contiguous()
    num_tokens = slot_mapping.shape[0]
    _, block_size, num_heads, head_dim = k_cache.shape
    mantissa, min_exp = fp8_grid(k_cache.dtype)
    if num_tokens:
        _store_kv_kernel[(num_tokens,)](
            k, v, k_cache, v_cache, slot_mapping,
            k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_size, num_heads, head_dim,
            LIMIT=cache_limit(k_cache.dtype), MANTISSA=mantissa, MIN_EXP=min_exp,
            BLOCK_H=block_for(num_heads), BLOCK_D=block_for(head_dim), num_warps=4,
        )
