"""A decode-sized linear layer with the element-wise ops around it folded in (`reference.fused_linear`).

In a decode step of a small batch every kernel is short: the GEMMs stream
the weights, and the ops between them (the residual add and RMSNorm before
qkv and gate_up, SiLU-and-mul before down) move a few kilobytes yet each
costs a launch and a ramp of a few microseconds inside the step's graph,
about a quarter of a 1B model's step at batch 1 (kernels/NOTES.md). Here they
ride on the GEMM that consumes or produces their rows:

- a norm prologue: every program first sums the squares of its rows (read
  from L2: a few KB per row at decode sizes), then normalizes each K tile of
  x on its way to the tensor cores, rounded as the norm kernel rounds;
- a gated prologue: each K tile of silu(gate) * up is computed from the
  gate_up output's two halves;
- a residual epilogue: the output tile, rounded, is added to the residual
  stream's and rounded again, as `y + residual` would be.

So a Llama-style layer is four of these, the fused rotary/KV store and the
attention: six launches instead of nine. The grid tiles N only, 16 columns
per program: a 2048-wide projection is 128 programs, about one per SM, each
streaming its rows of W in K tiles of 256 with a pipelined loop. No split-K:
it would need a second pass (or atomics) to sum partials and round them once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from pagoda.kernels.reference import FUSED_LINEAR_ROWS as ROW_TILE
from pagoda.kernels.reference import RowNorm, check_linear_edges
from pagoda.kernels.triton.attention_tile import mma
from pagoda.kernels.triton.launch import as_rows, block_for, exact_dot


@triton.jit
def _fused_linear_kernel(
    x_ptr, w_ptr, b_ptr, norm_ptr, r_ptr, out_ptr, m, n, k, stride_xm, stride_wn, stride_rm, stride_om, eps,
    NORM: tl.constexpr, ROUND_NORMED: tl.constexpr, GATED: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, EXACT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_in, n_in = offs_m < m, offs_n < n
    dtype = out_ptr.dtype.element_ty
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm
    w_cols = w_ptr + offs_n[None, :].to(tl.int64) * stride_wn
    if NORM:
        squares = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for k0 in range(0, k, BLOCK_K):
            kk = k0 + offs_k
            xs = tl.load(x_rows + kk[None, :], mask=m_in[:, None] & (kk < k)[None, :], other=0.0).to(tl.float32)
            squares += tl.sum(xs * xs, axis=1)
        inv_rms = tl.rsqrt(squares / k + eps)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, k, BLOCK_K):
        kk = k0 + offs_k
        k_in = kk < k
        x_mask = m_in[:, None] & k_in[None, :]
        a = tl.load(x_rows + kk[None, :], mask=x_mask, other=0.0)
        if NORM:
            h = a.to(tl.float32) * inv_rms[:, None]
            if ROUND_NORMED:
                h = h.to(dtype).to(tl.float32)
            weight = tl.load(norm_ptr + kk, mask=k_in, other=0.0).to(tl.float32)
            a = (h * weight[None, :]).to(dtype)
        elif GATED:  # x holds [gate | up], each k wide; silu(gate) rounded before the product, as F.silu(g) * u
            gate = a.to(tl.float32)
            up = tl.load(x_rows + k + kk[None, :], mask=x_mask, other=0.0).to(tl.float32)
            act = (gate * tl.sigmoid(gate)).to(dtype).to(tl.float32)
            a = (act * up).to(dtype)
        w = tl.load(w_cols + kk[:, None], mask=k_in[:, None] & n_in[None, :], other=0.0)
        acc = mma(a, w, acc, EXACT)
    if HAS_BIAS:  # inside the one rounding, as F.linear's bias
        acc += tl.load(b_ptr + offs_n, mask=n_in, other=0.0).to(tl.float32)[None, :]
    y = acc.to(dtype)
    out_mask = m_in[:, None] & n_in[None, :]
    if HAS_RESIDUAL:
        r = tl.load(r_ptr + offs_m[:, None].to(tl.int64) * stride_rm + offs_n[None, :], mask=out_mask, other=0.0)
        y = (y.to(tl.float32) + r.to(tl.float32)).to(dtype)
    tl.store(out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :], y, mask=out_mask)


@dataclass(frozen=True)
class LinearTiles:
    """Launch settings: columns per program, K per loop step, warps, pipeline stages."""

    block_n: int = 16
    block_k: int = 256
    num_warps: int = 4
    num_stages: int = 4


def fused_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, norm: RowNorm | None = None,
    gated: bool = False, residual: torch.Tensor | None = None, *, tiles: LinearTiles = LinearTiles(),
) -> torch.Tensor:
    """Same contract as `reference.fused_linear`; `tiles`: the launch settings (bench.gpu_fused_linear sweeps them)."""
    n, k = weight.shape
    check_linear_edges(norm, gated)
    if x.shape[-1] != (2 * k if gated else k) or weight.dtype != x.dtype or weight.stride(-1) != 1:
        raise ValueError(f"x {tuple(x.shape)}/{x.dtype} does not feed a weight {tuple(weight.shape)}/{weight.dtype}"
                         f"{' through the gated activation' if gated else ''}")
    if norm is not None and norm.round_normed and norm.weight.dtype != x.dtype:
        raise ValueError(f"a rounding norm's weight must be in the model dtype {x.dtype}, not {norm.weight.dtype}")
    x2 = as_rows(x)
    m = x2.shape[0]
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    r2 = out
    if residual is not None:
        if residual.shape[:-1] != x.shape[:-1] or residual.shape[-1] != n or residual.dtype != x.dtype:
            raise ValueError(f"residual {tuple(residual.shape)}/{residual.dtype} does not match the output "
                             f"{(*x.shape[:-1], n)}/{x.dtype}")
        r2 = as_rows(residual)
    block_k = min(tiles.block_k, block_for(k, 16))
    if m and n:
        _fused_linear_kernel[(triton.cdiv(m, ROW_TILE), triton.cdiv(n, tiles.block_n))](
            x2, weight, bias if bias is not None else out, norm.weight if norm is not None else out, r2, out,
            m, n, k, x2.stride(0), weight.stride(0), r2.stride(0), out.stride(0), norm.eps if norm is not None else 0.0,
            NORM=norm is not None, ROUND_NORMED=norm is not None and norm.round_normed, GATED=gated,
            HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None, EXACT=exact_dot(x.dtype),
            BLOCK_M=ROW_TILE, BLOCK_N=tiles.block_n, BLOCK_K=block_k, num_warps=tiles.num_warps,
            num_stages=tiles.num_stages,
        )
    return out.view(*x.shape[:-1], n)
