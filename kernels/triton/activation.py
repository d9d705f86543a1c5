"""Gated activations over the fused gate_up projection's output: silu(gate) * up (SwiGLU),
gelu_tanh(gate) * up (GeGLU, Gemma) and GPT-OSS's clamped SwiGLU (its experts').

Fusing reads the [rows, 2d] input once and writes [rows, d]: 3 transfers of
d per row, where silu then mul in PyTorch move 2d + d + d + d + d = 6. It is
purely memory-bound, so the grid tiles the columns to keep enough programs in
flight even for a single row (a decode of one sequence).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels.reference import ClampedSwiglu
from pagoda.kernels.triton.launch import as_rows, block_for

_MAX_BLOCK = 1024
# The activation a launch applies to the gate.
_SILU, _GELU, _CLAMPED = 0, 1, 2


@triton.jit
def _act_and_mul_kernel(x_ptr, out_ptr, stride_x, d, alpha, limit, ACT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < d
    gate = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + d + offs, mask=mask, other=0.0).to(tl.float32)
    if ACT == 1:  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), with tanh(y) = 2 sigmoid(2y) - 1
        inner = 0.7978845608028654 * (gate + 0.044715 * gate * gate * gate)
        act = gate * tl.sigmoid(2.0 * inner)
    elif ACT == 2:  # GPT-OSS: (clamp(up) + 1) * g * sigmoid(alpha g), g the gate clamped from above
        gate = tl.minimum(gate, limit)
        up = tl.minimum(tl.maximum(up, -limit), limit) + 1.0
        act = gate * tl.sigmoid(alpha * gate)
    else:
        act = gate * tl.sigmoid(gate)
    # Rounded to the model dtype between the two steps, as F.silu(gate) * up is.
    act = act.to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * d + offs, (act * up).to(out_ptr.dtype.element_ty), mask=mask)


def _act_and_mul(x: torch.Tensor, act: int, clamped: ClampedSwiglu | None = None) -> torch.Tensor:
    d = x.shape[-1] // 2
    x2 = as_rows(x, 2 * d)
    out = torch.empty(*x.shape[:-1], d, dtype=x.dtype, device=x.device)
    block = min(_MAX_BLOCK, block_for(d))
    if x2.shape[0] and d:
        _act_and_mul_kernel[(x2.shape[0], triton.cdiv(d, block))](
            x2, out, x2.stride(0), d, clamped.alpha if clamped else 0.0, clamped.limit if clamped else 0.0,
            ACT=act, BLOCK=block, num_warps=4)
    return out


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [..., 2d] -> silu(x[..., :d]) * x[..., d:] of shape [..., d]."""
    return _act_and_mul(x, _SILU)


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [..., 2d] -> gelu_tanh(x[..., :d]) * x[..., d:] of shape [..., d]."""
    return _act_and_mul(x, _GELU)


def clamped_swiglu_and_mul(x: torch.Tensor, act: ClampedSwiglu) -> torch.Tensor:
    """Same contract as `reference.clamped_swiglu_and_mul`."""
    return _act_and_mul(x, _CLAMPED, act)
