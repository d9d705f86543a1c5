"""Weight-only FP8 GEMM with block scales: y = x @ (W_fp8 * scale)^T, dequantized in registers.

A decode step streams every weight once, so storing weights in one byte
instead of two halves the bytes of the step's dominant term; the weights are
turned back into the activations' dtype tile by tile on their way to the
tensor cores, never written out at full width. Each (N-block, K-block) of
the weight has one fp32 scale (`weight_scale_inv`); when a K tile lies in one
scale block (the usual 128-wide blocks), a tile needs one scale per output
column, else one per element.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels.triton.attention_tile import mma
from pagoda.kernels.triton.launch import as_rows, exact_dot


@triton.jit
def _fp8_linear_kernel(
    x_ptr, w_ptr, s_ptr, out_ptr, m, n, k, stride_xm, stride_wn, stride_sn, stride_om,
    SCALE_ROWS: tl.constexpr, SCALE_COLS: tl.constexpr, ONE_SCALE_PER_COLUMN: tl.constexpr, EXACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_in, n_in = offs_m < m, offs_n < n
    x_ptrs = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
    w_ptrs = w_ptr + offs_n[None, :].to(tl.int64) * stride_wn + offs_k[:, None]
    s_rows = s_ptr + (offs_n // SCALE_ROWS)[None, :] * stride_sn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, k, BLOCK_K):
        k_in = offs_k < k - k0
        a = tl.load(x_ptrs, mask=m_in[:, None] & k_in[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_in[:, None] & n_in[None, :], other=0.0).to(tl.float32)
        if ONE_SCALE_PER_COLUMN:
            scale = tl.load(s_rows + k0 // SCALE_COLS, mask=n_in[None, :], other=0.0)
        else:
            scale = tl.load(s_rows + ((k0 + offs_k) // SCALE_COLS)[:, None], mask=k_in[:, None] & n_in[None, :],
                            other=0.0)
        acc = mma(a, (w * scale).to(x_ptr.dtype.element_ty), acc, EXACT)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    out_ptrs = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=m_in[:, None] & n_in[None, :])


def fp8_block_linear(
    x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int],
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as `reference.fp8_block_linear`."""
    n, k = weight.shape
    x2 = as_rows(x, k)
    m = x2.shape[0]
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    # Decode-sized batches: thin row tiles, wide K steps; larger batches: square-ish tiles.
    block_m, block_n, block_k = (16, 64, 128) if m <= 16 else (64, 128, 64)
    block_k = min(block_k, triton.next_power_of_2(block[1])) if block[1] >= 16 else block_k
    if m:
        grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
        _fp8_linear_kernel[grid](
            x2, weight, scale_inv, out, m, n, k, x2.stride(0), weight.stride(0), scale_inv.stride(0), out.stride(0),
            SCALE_ROWS=block[0], SCALE_COLS=block[1], ONE_SCALE_PER_COLUMN=block[1] % block_k == 0,
            EXACT=exact_dot(x.dtype), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4,
        )
    out = out.view(*x.shape[:-1], n)
    return out if bias is None else out + bias
