"""LFM2's gated short convolution: y = C * conv(B * x), a depthwise causal convolution of a few
taps between two input-dependent gates, in place of attention in most of LFM2's layers.

Its only state is the convolution's last inputs, kept in slots as every recurrent layer's
(engine/layers/recurrent.py); there is no recurrence after it. Tensor parallelism splits the
channels.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagoda.engine.attention import AttentionMetadata
from pagoda.engine.distributed import tp_rank, tp_size
from pagoda.engine.layers.linear import MergedColumnParallelLinear, RowParallelLinear, divide
from pagoda.engine.layers.recurrent import RecurrentMixer
from pagoda.engine.layers.weights import copy_into, read_shard


class ShortConv(RecurrentMixer):
    """in_proj -> (B, C, x) -> C * conv(B * x) -> out_proj."""

    def __init__(self, hidden_size: int, kernel: int, bias: bool) -> None:
        channels = divide(hidden_size, tp_size(), "hidden size")
        super().__init__(channels, kernel, bias, self._load_conv, conv_silu=False)
        self.in_proj = MergedColumnParallelLinear(hidden_size, [hidden_size] * 3, bias=bias)
        self.out_proj = RowParallelLinear(hidden_size, hidden_size, bias=bias)

    def _load_conv(self, param: nn.Parameter, src: Any) -> None:
        rows = read_shard(src, 0, tp_rank() * self.conv_dim, self.conv_dim)
        copy_into(param, rows.reshape(self.conv_dim, *param.shape[1:]))

    def state_shape(self) -> tuple[int, ...]:
        return (0,)  # none beyond the convolution's

    def step(self, conv: torch.Tensor, inputs: tuple[torch.Tensor, ...], slots: torch.Tensor,
             carried: torch.Tensor) -> torch.Tensor:
        return conv

    def chunk(self, conv: torch.Tensor, inputs: tuple[torch.Tensor, ...],
              state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return conv, state

    def forward(self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """(positions unused: the convolution is ordered by itself.)"""
        b, c, xs = self.in_proj(x).split(self.conv_dim, dim=-1)
        return self.out_proj(c * self.recur(b * xs, (), meta))
