"""RMSNorm, optionally fused with the residual add that precedes it.

One program per row keeps the whole row in registers: the sum of squares and
the scaling need it twice, so x (and the residual) are read from memory once
and each output written once. Unfused, the add and the norm would read the
sum back: 5 row-sized transfers instead of 4 (residual form) or the same 2
(plain form). Rounding follows the reference: the sum is rounded to the model
dtype before it is normalised, and the normalised row is rounded before the
weight multiplies it, as Hugging Face's implementations do (Gemma's and Qwen3.5's
(1 + weight) norms multiply in fp32 and round once: `round_normed` off).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels.triton.launch import as_3d, block_for


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr,
    inner, stride_xa, stride_xb, stride_ra, stride_rb, n, eps,
    HAS_RESIDUAL: tl.constexpr, ROUND_NORMED: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    a, b = row // inner, row % inner
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + a * stride_xa + b * stride_xb + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + a * stride_ra + b * stride_rb + offs, mask=mask, other=0.0).to(tl.float32)
        summed = (x + r).to(res_out_ptr.dtype.element_ty)
        tl.store(res_out_ptr + row * n + offs, summed, mask=mask)
        x = summed.to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(x * x, axis=0) / n + eps)
    h = x * inv_rms
    if ROUND_NORMED:
        h = h.to(x_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * n + offs, (h * w).to(out_ptr.dtype.element_ty), mask=mask)


def _launch(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float, round_normed: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    x3 = as_3d(x)
    r3 = as_3d(residual) if residual is not None else x3
    dtype = torch.promote_types(weight.dtype, x.dtype) if round_normed else x.dtype
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    res_out = torch.empty(x.shape, dtype=x.dtype, device=x.device) if residual is not None else out
    n = x.shape[-1]
    rows = x3.shape[0] * x3.shape[1]
    block = block_for(n)
    if rows:
        _rms_norm_kernel[(rows,)](
            x3, r3, weight, out, res_out,
            x3.shape[1], x3.stride(0), x3.stride(1), r3.stride(0), r3.stride(1), n, eps,
            HAS_RESIDUAL=residual is not None, ROUND_NORMED=round_normed, BLOCK=block,
            num_warps=min(16, max(1, block // 256)),
        )
    return out, (res_out if residual is not None else None)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, round_normed: bool = True) -> torch.Tensor:
    """Normalise the last dim of x by its root mean square, scaled by weight (`reference.rms_norm`)."""
    return _launch(x, None, weight, eps, round_normed)[0]


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, round_normed: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (rms_norm(x + residual), x + residual) in one pass over the rows."""
    if residual.shape != x.shape or residual.dtype != x.dtype:
        raise ValueError(f"residual {tuple(residual.shape)}/{residual.dtype} does not match x {tuple(x.shape)}/{x.dtype}")
    out, summed = _launch(x, residual, weight, eps, round_normed)
    return out, summed
