"""Rotary position embedding for q and k together, in the neox or gpt-j layout, optionally fused with
the per-head q/k RMSNorm before it and the KV-cache store after it.

One program per token: the token's cos/sin row is read once and applied to
all of its query and key heads, so the table costs one read per token rather
than one per head. Both layouts rotate pairs (x1, x2) by the same angle and
differ only in where a pair lives: neox pairs element i with i + rotary_dim/2
(rotate-half), gpt-j pairs 2i with 2i + 1. Scaling rules (linear, llama3)
change only the frequencies, hence only the table the caller passes. Elements
past rotary_dim (partial rotary) are copied unchanged.

The fused form (`rotate_and_store_kv`) is what an attention layer runs between its qkv projection and
its attention: per-head norms (Qwen3, Gemma 3), rotation, and the token's K and V written into its cache
slot, one kernel where there were three to five (norms, rotary, a copy of v, the store): at decode
batch sizes each of those is a launch of a few microseconds moving a few kilobytes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels.reference import QKNorm, cache_limit
from pagoda.kernels.triton.kv_cache import check_cache_pair, fp8_grid, to_cache_values
from pagoda.kernels.triton.launch import block_for


@triton.jit
def _pair_offsets(half, IS_NEOX: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """The offsets within a head of each rotated pair's two elements."""
    i = tl.arange(0, BLOCK_HALF)[None, :]
    if IS_NEOX:
        return i, i + half
    return 2 * i, 2 * i + 1


@triton.jit
def _rotated_heads(
    src, stride_h, w_ptr, num_heads, head_dim, half, cos, sin, eps,
    IS_NEOX: tl.constexpr, HAS_NORM: tl.constexpr, ROUND_NORMED: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One token's heads at `src` (fp32): the pairs rotated, and the pass-through tail of partial rotary;
    each head first normalized by its root mean square and scaled by w (rounded as the reference rounds
    the norm's output: to the model dtype) where HAS_NORM."""
    heads = tl.arange(0, BLOCK_H)[:, None]
    i = tl.arange(0, BLOCK_HALF)[None, :]
    d = tl.arange(0, BLOCK_D)[None, :]
    i1, i2 = _pair_offsets(half, IS_NEOX, BLOCK_HALF)
    mask = (heads < num_heads) & (i < half)
    tail = (heads < num_heads) & (d >= 2 * half) & (d < head_dim)
    dtype = src.dtype.element_ty
    row = src + heads * stride_h
    x1 = tl.load(row + i1, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(row + i2, mask=mask, other=0.0).to(tl.float32)
    rest = tl.load(row + d, mask=tail, other=0.0).to(tl.float32)
    if HAS_NORM:
        squares = tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1) + tl.sum(rest * rest, axis=1)
        inv_rms = tl.rsqrt(squares / head_dim + eps)[:, None]
        x1, x2, rest = x1 * inv_rms, x2 * inv_rms, rest * inv_rms
        if ROUND_NORMED:
            x1, x2, rest = x1.to(dtype).to(tl.float32), x2.to(dtype).to(tl.float32), rest.to(dtype).to(tl.float32)
        x1 = (x1 * tl.load(w_ptr + i1, mask=i < half, other=0.0).to(tl.float32)).to(dtype).to(tl.float32)
        x2 = (x2 * tl.load(w_ptr + i2, mask=i < half, other=0.0).to(tl.float32)).to(dtype).to(tl.float32)
        rest = (rest * tl.load(w_ptr + d, mask=d < head_dim, other=0.0).to(tl.float32)).to(dtype).to(tl.float32)
    return x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest


@triton.jit
def _write_heads(
    dst, stride_h, y1, y2, rest, num_heads, head_dim, half, LIMIT: tl.constexpr, MANTISSA: tl.constexpr,
    MIN_EXP: tl.constexpr, IS_NEOX: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Writes what _rotated_heads returned at `dst` (heads stride_h apart), as dst's dtype holds it."""
    heads = tl.arange(0, BLOCK_H)[:, None]
    i = tl.arange(0, BLOCK_HALF)[None, :]
    d = tl.arange(0, BLOCK_D)[None, :]
    i1, i2 = _pair_offsets(half, IS_NEOX, BLOCK_HALF)
    mask = (heads < num_heads) & (i < half)
    tail = (heads < num_heads) & (d >= 2 * half) & (d < head_dim)
    dtype = dst.dtype.element_ty
    row = dst + heads * stride_h
    tl.store(row + i1, to_cache_values(y1, LIMIT, MANTISSA, MIN_EXP).to(dtype), mask=mask)
    tl.store(row + i2, to_cache_values(y2, LIMIT, MANTISSA, MIN_EXP).to(dtype), mask=mask)
    tl.store(row + d, to_cache_values(rest, LIMIT, MANTISSA, MIN_EXP).to(dtype), mask=tail)


@triton.jit
def _rotary_kernel(
    pos_ptr, q_ptr, k_ptr, v_ptr, cache_ptr, q_out_ptr, k_out_ptr, v_out_ptr, slot_ptr, q_w_ptr, k_w_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_cache,
    stride_ob, stride_ot, stride_oh, block_size, num_q_heads, num_k_heads, head_dim, half, eps,
    IS_NEOX: tl.constexpr, HAS_NORM: tl.constexpr, ROUND_NORMED: tl.constexpr, STORE_KV: tl.constexpr,
    LIMIT: tl.constexpr, MANTISSA: tl.constexpr, MIN_EXP: tl.constexpr,
    BLOCK_QH: tl.constexpr, BLOCK_KH: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """q always goes to q_out (contiguous). k goes to k_out, a contiguous [T, Hkv, D] (STORE_KV off), or
    with v into the token's cache slot (STORE_KV on; slot -1, a CUDA graph's padding row: nowhere)."""
    t = tl.program_id(0)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    i = tl.arange(0, BLOCK_HALF)[None, :]
    row = cache_ptr + pos * stride_cache
    # Rounded to the model dtype first, as the reference (and Hugging Face) do.
    dtype = q_out_ptr.dtype.element_ty
    cos = tl.load(row + i, mask=i < half, other=0.0).to(dtype).to(tl.float32)
    sin = tl.load(row + half + i, mask=i < half, other=0.0).to(dtype).to(tl.float32)
    y1, y2, rest = _rotated_heads(q_ptr + t * stride_qt, stride_qh, q_w_ptr, num_q_heads, head_dim, half, cos, sin,
                                  eps, IS_NEOX, HAS_NORM, ROUND_NORMED, BLOCK_QH, BLOCK_HALF, BLOCK_D)
    _write_heads(q_out_ptr + t * num_q_heads * head_dim, head_dim, y1, y2, rest, num_q_heads, head_dim, half,
                 0.0, 0, 0, IS_NEOX, BLOCK_QH, BLOCK_HALF, BLOCK_D)
    if STORE_KV:
        slot = tl.load(slot_ptr + t).to(tl.int64)
        offset = (slot // block_size) * stride_ob + (slot % block_size) * stride_ot
    else:
        slot = t.to(tl.int64)
        offset = slot * stride_ot
    if slot >= 0:
        k1, k2, k_rest = _rotated_heads(k_ptr + t * stride_kt, stride_kh, k_w_ptr, num_k_heads, head_dim, half, cos,
                                        sin, eps, IS_NEOX, HAS_NORM, ROUND_NORMED, BLOCK_KH, BLOCK_HALF, BLOCK_D)
        _write_heads(k_out_ptr + offset, stride_oh, k1, k2, k_rest, num_k_heads, head_dim, half,
                     LIMIT, MANTISSA, MIN_EXP, IS_NEOX, BLOCK_KH, BLOCK_HALF, BLOCK_D)
        if STORE_KV:
            heads = tl.arange(0, BLOCK_KH)[:, None]
            d = tl.arange(0, BLOCK_D)[None, :]
            mask = (heads < num_k_heads) & (d < head_dim)
            v = tl.load(v_ptr + t * stride_vt + heads * stride_vh + d, mask=mask).to(tl.float32)
            tl.store(v_out_ptr + offset + heads * stride_oh + d,
                     to_cache_values(v, LIMIT, MANTISSA, MIN_EXP).to(v_out_ptr.dtype.element_ty), mask=mask)


def _tiles(q: torch.Tensor, k: torch.Tensor, rotary_dim: int) -> dict[str, int]:
    """The kernel's tile sizes for q [T, Hq, D] and k [T, Hkv, D]."""
    return dict(BLOCK_QH=block_for(q.shape[1]), BLOCK_KH=block_for(k.shape[1]), BLOCK_HALF=block_for(rotary_dim // 2),
                BLOCK_D=block_for(q.shape[2]))


def _unit_stride(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Tensors whose last dim is contiguous (the kernels stride over tokens and heads, not elements)."""
    return [x if x.stride(-1) == 1 else x.contiguous() for x in tensors]


def rotary_embedding(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    rotary_dim: int,
    is_neox: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q: [T, Hq, D], k: [T, Hkv, D] (token rows may be strided); cos_sin_cache: [max_pos, rotary_dim]."""
    q, k, cos_sin_cache = _unit_stride(q, k, cos_sin_cache)
    num_tokens, num_q_heads, head_dim = q.shape
    q_out, k_out = torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if num_tokens:
        _rotary_kernel[(num_tokens,)](
            positions, q, k, k, cos_sin_cache, q_out, k_out, k_out, positions, q, q,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), 0, 0, cos_sin_cache.stride(0),
            0, k_out.stride(0), k_out.stride(1), 1, num_q_heads, k.shape[1], head_dim, rotary_dim // 2, 0.0,
            IS_NEOX=is_neox, HAS_NORM=False, ROUND_NORMED=False, STORE_KV=False, LIMIT=0.0, MANTISSA=0, MIN_EXP=0,
            **_tiles(q, k, rotary_dim), num_warps=4,
        )
    return q_out, k_out


def rotate_and_store_kv(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    rotary_dim: int,
    is_neox: bool,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    qk_norm: QKNorm | None = None,
) -> torch.Tensor:
    """`reference.rotate_and_store_kv` in one launch: q/k/v [T, H, D] views (strided tokens and heads, as
    sliced from a fused qkv projection); caches [num_blocks, block_size, Hkv, D]; the rotated q returned."""
    check_cache_pair(k_cache, v_cache)
    q, k, v, cos_sin_cache = _unit_stride(q, k, v, cos_sin_cache)
    num_tokens, num_q_heads, head_dim = q.shape
    if not num_tokens == k.shape[0] == v.shape[0] == slot_mapping.shape[0]:
        raise ValueError(f"q, k, v and slot_mapping must have one row per token, got {q.shape[0]}, {k.shape[0]}, "
                         f"{v.shape[0]} and {slot_mapping.shape[0]}")
    if qk_norm is not None and qk_norm.round_normed and qk_norm.q_weight.dtype != q.dtype:
        raise ValueError("a norm that rounds its normalized rows needs a weight in the model's dtype")
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    mantissa, min_exp = fp8_grid(k_cache.dtype)
    weights = (qk_norm.q_weight, qk_norm.k_weight) if qk_norm is not None else (q, q)
    if num_tokens:
        _rotary_kernel[(num_tokens,)](
            positions, q, k, v, cos_sin_cache, q_out, k_cache, v_cache, slot_mapping, *weights,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos_sin_cache.stride(0),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), k_cache.shape[1], num_q_heads, k.shape[1],
            head_dim, rotary_dim // 2, qk_norm.eps if qk_norm is not None else 0.0,
            IS_NEOX=is_neox, HAS_NORM=qk_norm is not None, ROUND_NORMED=qk_norm is not None and qk_norm.round_normed,
            STORE_KV=True, LIMIT=cache_limit(k_cache.dtype), MANTISSA=mantissa, MIN_EXP=min_exp,
            **_tiles(q, k, rotary_dim), num_warps=4,
        )
    return q_out
