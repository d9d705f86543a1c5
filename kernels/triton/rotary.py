"""Rotary position embedding for q and k together, in the neox or gpt-j layout.

One program per token: the token's cos/sin row is read once and applied to
all of its query and key heads, so the table costs one read per token rather
than one per head. Both layouts rotate pairs (x1, x2) by the same angle and
differ only in where a pair lives: neox pairs element i with i + rotary_dim/2
(rotate-half), gpt-j pairs 2i with 2i + 1. Scaling rules (linear, llama3)
change only the frequencies, hence only the table the caller passes. Elements
past rotary_dim (partial rotary) are copied unchanged.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels.triton.launch import block_for


@triton.jit
def _rotate_heads(
    x_ptr, out_ptr, t, stride_t, stride_h, num_heads, head_dim, cos, sin, half,
    IS_NEOX: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_D: tl.constexpr,
):
    heads = tl.arange(0, BLOCK_H)[:, None]
    i = tl.arange(0, BLOCK_HALF)[None, :]
    if IS_NEOX:
        i1, i2 = i, i + half
    else:
        i1, i2 = 2 * i, 2 * i + 1
    mask = (heads < num_heads) & (i < half)
    src = x_ptr + t * stride_t + heads * stride_h
    dst = out_ptr + (t * num_heads + heads) * head_dim
    x1 = tl.load(src + i1, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + i2, mask=mask, other=0.0).to(tl.float32)
    dtype = out_ptr.dtype.element_ty
    tl.store(dst + i1, (x1 * cos - x2 * sin).to(dtype), mask=mask)
    tl.store(dst + i2, (x2 * cos + x1 * sin).to(dtype), mask=mask)
    # The pass-through tail [2 * half, head_dim) of partial rotary.
    d = tl.arange(0, BLOCK_D)[None, :]
    tail = (heads < num_heads) & (d >= 2 * half) & (d < head_dim)
    tl.store(dst + d, tl.load(src + d, mask=tail), mask=tail)


@triton.jit
def _rotary_kernel(
    pos_ptr, q_ptr, k_ptr, cache_ptr, q_out_ptr, k_out_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_cache, num_q_heads, num_k_heads, head_dim, half,
    IS_NEOX: tl.constexpr, BLOCK_QH: tl.constexpr, BLOCK_KH: tl.constexpr,
    BLOCK_HALF: tl.constexpr, BLOCK_D: tl.constexpr,
):
    t = tl.program_id(0)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    i = tl.arange(0, BLOCK_HALF)[None, :]
    row = cache_ptr + pos * stride_cache
    # Rounded to the model dtype first, as the reference (and Hugging Face) do.
    dtype = q_out_ptr.dtype.element_ty
    cos = tl.load(row + i, mask=i < half, other=0.0).to(dtype).to(tl.float32)
    sin = tl.load(row + half + i, mask=i < half, other=0.0).to(dtype).to(tl.float32)
    _rotate_heads(q_ptr, q_out_ptr, t, stride_qt, stride_qh, num_q_heads, head_dim, cos, sin, half,
                  IS_NEOX, BLOCK_QH, BLOCK_HALF, BLOCK_D)
    _rotate_heads(k_ptr, k_out_ptr, t, stride_kt, stride_kh, num_k_heads, head_dim, cos, sin, half,
                  IS_NEOX, BLOCK_KH, BLOCK_HALF, BLOCK_D)


def rotary_embedding(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    rotary_dim: int,
    is_neox: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q: [T, Hq, D], k: [T, Hkv, D] (token rows may be strided); cos_sin_cache: [max_pos, rotary_dim]."""
    if q.stride(-1) != 1 or k.stride(-1) != 1:
        q, k = q.contiguous(), k.contiguous()
    if cos_sin_cache.stride(-1) != 1:
        cos_sin_cache = cos_sin_cache.contiguous()
    num_tokens, num_q_heads, head_dim = q.shape
    q_out, k_out = torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(k.shape, dtype=k.dtype, device=k.device)
    half = rotary_dim // 2
    if num_tokens:
        _rotary_kernel[(num_tokens,)](
            positions, q, k, cos_sin_cache, q_out, k_out,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos_sin_cache.stride(0),
            num_q_heads, k.shape[1], head_dim, half,
            IS_NEOX=is_neox, BLOCK_QH=block_for(num_q_heads), BLOCK_KH=block_for(k.shape[1]),
            BLOCK_HALF=block_for(half), BLOCK_D=block_for(head_dim), num_warps=4,
        )
    return q_out, k_out
