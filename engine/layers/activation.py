"""SwiGLU's activation: silu(gate) * up over the fused gate_up projection."""

from __future__ import annotations

import torch
from torch import nn


class SiluAndMul(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from pagoda.kernels import ops

        return ops.silu_and_mul(x)
