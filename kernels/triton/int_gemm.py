"""Weight-only integer GEMM (W4A16, W8A16): y = x @ ((q - zero) * scale)^T, dequantized in registers.

GPTQ, AWQ and compressed-tensors checkpoints all reduce, once loaded, to
one layout: unsigned integers packed along K into int32 words (row n, word
k // (32 / bits), bits (k % (32 / bits)) * bits), and a scale and a zero point
per (row, group). bitsandbytes' 4-bit weights (NF4, FP4) are the same words
whose values index a 16-entry codebook instead: w = codebook[q] * scale. A decode step streams every weight once, so 4-bit weights
move a quarter of bf16's bytes; each tile is unpacked and scaled on its way
to the tensor cores, never written out at full width. Where a K tile lies in
one group (groups of 128, tiles of 64 or 128, no act-order), a tile needs one
scale and zero per row; otherwise one per element, read through g_idx for
GPTQ's act-order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels.triton.attention_tile import mma
from pagoda.kernels.triton.launch import as_rows, exact_dot


@triton.jit
def dequantize_tile(
    q_ptrs, s_rows, z_rows, g_ptr, c_ptr, k0, k, offs_k, offs_w, n_in, group_offset,
    BITS: tl.constexpr, GROUP_SIZE: tl.constexpr, HAS_G_IDX: tl.constexpr, ONE_GROUP_PER_TILE: tl.constexpr,
    CODEBOOK: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """The fp32 weights [BLOCK_K, BLOCK_N] of the K tile at k0: words [BLOCK_K / PER_WORD, BLOCK_N] at
    q_ptrs, each loaded once and split into its values (K-consecutive as packed), less their zero
    points (or looked up in the codebook at c_ptr, CODEBOOK), times their scales (rows s_rows,
    z_rows); the group of a column is g_idx's (HAS_G_IDX), or (k + group_offset) // GROUP_SIZE, one per
    tile when ONE_GROUP_PER_TILE."""
    PER_WORD: tl.constexpr = 32 // BITS
    kk = k0 + offs_k
    k_in = kk < k
    tile_in = k_in[:, None] & n_in[None, :]
    words = tl.load(q_ptrs, mask=(offs_w < (k - k0) // PER_WORD)[:, None] & n_in[None, :], other=0)
    shifts = (tl.arange(0, PER_WORD) * BITS)[None, :, None]
    q = tl.reshape((words[:, None, :] >> shifts) & ((1 << BITS) - 1), (BLOCK_K, BLOCK_N))
    if HAS_G_IDX:
        group = tl.load(g_ptr + kk, mask=k_in, other=0)[:, None]
        mask = tile_in
    elif ONE_GROUP_PER_TILE:
        group = (k0 + group_offset) // GROUP_SIZE
        mask = n_in[None, :]
    else:
        group = ((kk + group_offset) // GROUP_SIZE)[:, None]
        mask = tile_in
    scale = tl.load(s_rows + group, mask=mask, other=0.0).to(tl.float32)
    if CODEBOOK:  # 16 entries: a gather that stays in L1; no zero points
        return tl.load(c_ptr + q).to(tl.float32) * scale
    zero = tl.load(z_rows + group, mask=mask, other=0).to(tl.int32)
    return (q - zero).to(tl.float32) * scale


@triton.jit
def _int_linear_kernel(
    x_ptr, q_ptr, s_ptr, z_ptr, g_ptr, c_ptr, out_ptr, m, n, k, stride_xm, stride_qn, stride_sn, stride_zn,
    stride_om, BITS: tl.constexpr, GROUP_SIZE: tl.constexpr, HAS_G_IDX: tl.constexpr,
    ONE_GROUP_PER_TILE: tl.constexpr, CODEBOOK: tl.constexpr, EXACT: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    WORDS: tl.constexpr = BLOCK_K // (32 // BITS)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_w = tl.arange(0, WORDS)
    m_in, n_in = offs_m < m, offs_n < n
    x_ptrs = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
    q_ptrs = q_ptr + offs_n[None, :].to(tl.int64) * stride_qn + offs_w[:, None]
    s_rows = s_ptr + offs_n[None, :].to(tl.int64) * stride_sn
    z_rows = z_ptr + offs_n[None, :].to(tl.int64) * stride_zn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, k, BLOCK_K):
        a = tl.load(x_ptrs, mask=m_in[:, None] & (offs_k < k - k0)[None, :], other=0.0)
        w = dequantize_tile(q_ptrs, s_rows, z_rows, g_ptr, c_ptr, k0, k, offs_k, offs_w, n_in, 0, BITS, GROUP_SIZE,
                            HAS_G_IDX, ONE_GROUP_PER_TILE, CODEBOOK, BLOCK_K, BLOCK_N)
        acc = mma(a, w.to(x_ptr.dtype.element_ty), acc, EXACT)
        x_ptrs += BLOCK_K
        q_ptrs += WORDS
    out_ptrs = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=m_in[:, None] & n_in[None, :])


def int_linear(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor | None,
    bits: int, group_size: int, bias: torch.Tensor | None = None, codebook: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as `reference.int_linear`."""
    n = qweight.shape[0]
    k = qweight.shape[1] * (32 // bits)
    x2 = as_rows(x, k)
    m = x2.shape[0]
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    # Decode-sized batches: thin row tiles, wide K steps; larger batches: square-ish tiles, narrower
    # with act-order, whose per-element scale and zero gathers hold a tile of each in registers.
    block_m, block_n, block_k = (16, 64, 128) if m <= 16 else (64, 64 if g_idx is not None else 128, 64)
    if m:
        grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
        _int_linear_kernel[grid](
            x2, qweight, scales, zeros, g_idx if g_idx is not None else qweight,
            codebook if codebook is not None else scales, out, m, n, k,
            x2.stride(0), qweight.stride(0), scales.stride(0), zeros.stride(0), out.stride(0),
            BITS=bits, GROUP_SIZE=group_size, HAS_G_IDX=g_idx is not None,
            ONE_GROUP_PER_TILE=group_size % block_k == 0, CODEBOOK=codebook is not None, EXACT=exact_dot(x.dtype),
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4,
        )
    out = out.view(*x.shape[:-1], n)
    return out if bias is None else out + bias
