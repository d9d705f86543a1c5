"""RMSNorm, optionally fused with the residual add that precedes it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagoda.engine.layers.weights import copy_into, read_full


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Returns norm(x), or (norm(x + residual), x + residual) when a residual is given."""
        from pagoda.kernels import ops

        if residual is None:
            return ops.rms_norm(x, self.weight, self.eps)
        return ops.fused_add_rms_norm(x, residual, self.weight, self.eps)

    def with_residual(self, x: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """A layer's entry: (norm(x + residual), x + residual), where no residual yet (the first
        layer, x the embeddings) means x itself starts the residual stream."""
        if residual is None:
            return self(x), x
        return self(x, residual)


class GemmaRMSNorm(RMSNorm):
    """Gemma's RMSNorm scales by (1 + weight): checkpoints store the offset from one, which the
    loader adds once (in fp32), so the forward pass is the plain kernel's."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__(hidden_size, eps)
        self.weight.weight_loader = self.weight_loader

    @staticmethod
    def weight_loader(param: nn.Parameter, src: Any) -> None:
        copy_into(param, read_full(src).float() + 1.0)
