"""Gated MLP activations over the fused gate_up projection: silu(gate) * up (SwiGLU, most
families) and gelu_tanh(gate) * up (GeGLU, Gemma)."""

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
