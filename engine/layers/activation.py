"""MLP activations: over the fused gate_up projection silu(gate) * up (SwiGLU, most families) and
gelu_tanh(gate) * up (GeGLU, Gemma); and Apertus's ungated xIELU with its learned parameters."""

from __future__ import annotations

import torch
from torch import nn


class SiluAndMul(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from pagoda.kernels import ops

        return ops.silu_and_mul(x)


class GeluAndMul(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from pagoda.kernels import ops

        return ops.gelu_tanh_and_mul(x)


class XIeLU(nn.Module):
    """xIELU (Apertus): beta x + softplus(alpha_p) x^2 for x > 0, else beta x + (beta + softplus(alpha_n))
    (expm1(min(x, eps)) - x); alpha_p, alpha_n, beta and eps are the checkpoint's, one each per layer."""

    def __init__(self) -> None:
        super().__init__()
        for name in ("alpha_p", "alpha_n", "beta", "eps"):
            setattr(self, name, nn.Parameter(torch.empty(1 if name.startswith("alpha") else ()), requires_grad=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha_p = nn.functional.softplus(self.alpha_p)
        alpha_n = self.beta + nn.functional.softplus(self.alpha_n)
        negative = (torch.expm1(torch.minimum(x, self.eps)) - x) * alpha_n
        return torch.where(x > 0, alpha_p * x * x, negative) + self.beta * x
