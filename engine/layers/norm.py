"""RMSNorm (and LayerNorm), optionally fused with the residual add that precedes it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagoda.engine.distributed import all_reduce, tp_rank, tp_size
from pagoda.engine.layers.weights import copy_into, read_full, read_shard
from pagoda.kernels.reference import RowNorm


class _ResidualEntry:
    """A norm's entry into a layer: (norm(x + residual), x + residual), where no residual yet (the
    first layer, x the embeddings) means x itself starts the residual stream."""

    def with_residual(self, x: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            return self(x), x  # type: ignore[operator]
        return self(x, residual)  # type: ignore[operator]


class RMSNorm(_ResidualEntry, nn.Module):
    # The normalized row rounded to the model's dtype before the weight multiplies it (Llama's order).
    round_normed = True

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
            return ops.rms_norm(x, self.weight, self.eps, self.round_normed)
        return ops.fused_add_rms_norm(x, residual, self.weight, self.eps, self.round_normed)

    def row_norm(self) -> RowNorm:
        """This norm as the prologue of the projection that consumes its rows (ops.fused_linear)."""
        return RowNorm(self.weight, self.eps, self.round_normed)


class Fp32RMSNorm(RMSNorm):
    """An RMSNorm whose weight stays float32 and scales the normalized row before its one rounding
    (Gemma 4's): in bf16 a rounded weight, or a rounded row, would shift logits from transformers'."""

    round_normed = False
    offset = 0.0  # added to the checkpoint's weight at load

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__(hidden_size, eps)
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=torch.float32), requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, src: Any) -> None:
        copy_into(param, read_full(src).float() + self.offset)


class GemmaRMSNorm(Fp32RMSNorm):
    """Gemma's (and Qwen3.5's) RMSNorm scales by (1 + weight) in fp32 and rounds once: checkpoints store
    the offset from one, which the loader adds once into a float32 weight (1 + w is not exact in bf16),
    so the forward pass is the plain kernel's without its intermediate rounding."""

    offset = 1.0


class ShardedRMSNorm(nn.Module):
    """RMSNorm over a vector that tensor parallelism splits: OLMo 2 normalizes q and k across all
    heads, while each rank holds only its heads' slice. Each rank's sum of squares joins one
    all-reduce (a scalar per token), and its weight is its slice of the checkpoint's."""

    def __init__(self, local: int, full: int, eps: float) -> None:
        super().__init__()
        if local * tp_size() != full:
            raise ValueError(f"a norm over {full} features cannot be split into this rank's {local}: the "
                             "tensor-parallel size must divide the heads it spans (here, the KV heads)")
        self.eps, self.full = eps, full
        self.weight = nn.Parameter(torch.ones(local), requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, src: Any) -> None:
        size = param.shape[0]
        copy_into(param, read_shard(src, 0, tp_rank() * size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squares = all_reduce(x.float().pow(2).sum(-1, keepdim=True))
        return self.weight * (x.float() * torch.rsqrt(squares / self.full + self.eps)).to(x.dtype)


class LayerNorm(_ResidualEntry, nn.Module):
    """LayerNorm, with a bias (StarCoder2) or without (Cohere), with RMSNorm's interface: norm(x), or
    (norm(x + residual), x + residual). torch's fused layer_norm does the work."""

    def __init__(self, hidden_size: int, eps: float, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)
        if bias:
            self.bias = nn.Parameter(torch.zeros(hidden_size), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if residual is not None:
            x = x + residual
        out = nn.functional.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        return out if residual is None else (out, x)
