"""Comparison bounds for kernels against their PyTorch references."""

from __future__ import annotations

import torch

from pagoda.kernels.triton.launch import interpreting

# ‖out − ref‖ / ‖ref‖ bounds: fp32 arithmetic lands far under 1e-5; half
# precisions are bounded by their rounding (fp16: 11-bit mantissa, bf16: 8).
REL_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def assert_close(out: torch.Tensor, ref: torch.Tensor, rel_tol: float | None = None) -> None:
    """Every element written and finite, and the relative error norm within the dtype's bound (or `rel_tol`)."""
    bound = REL_TOL[ref.dtype] if rel_tol is None else rel_tol
    assert out.shape == ref.shape and out.dtype == ref.dtype, (out.shape, out.dtype, ref.shape, ref.dtype)
    bad = ~torch.isfinite(out.float())
    assert not bad.any(), f"{int(bad.sum())} of {out.numel()} elements unwritten or not finite, first at {bad.nonzero()[0].tolist()}"
    err = (out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)
    assert err <= bound, f"relative error {err:.3g} > {bound:g} for {ref.dtype}"


def chain_tolerance(dtype: torch.dtype) -> float:
    """The dtype's bound, widened for bf16 under the interpreter, which casts fp32 to bf16 by
    truncation (round toward zero, unlike the GPU's round-to-nearest): its bias compounds over a
    kernel's chain of roundings (a norm's, its weight's, the rotation's; a MoE's gate_up, silu,
    silu * up and down), to 1-1.5 %."""
    return 3e-2 if dtype == torch.bfloat16 and interpreting() else REL_TOL[dtype]
