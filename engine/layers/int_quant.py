"""Weight-only integer quantization (GPTQ, AWQ, compressed-tensors W4A16/W8A16, bitsandbytes 4-bit):
the layout the linear layers hold, and packing into it.

Whatever the checkpoint's format, a quantized projection is held as:
- `qweight`: int32 [N, K * bits / 32], unsigned integers packed along K, the lowest bits first;
- `scales`: [N, G], in the checkpoint's own dtype (fp16 scales stay exact under a bf16 model);
- `zeros`: uint8 [N, G], zero points in the weights' unsigned domain (2 ** (bits - 1) when the
  scheme is symmetric);
- `g_idx`: int32 [K], each input column's group, only for GPTQ's act-order (otherwise column k
  is in group k // group_size);
- `codebook`: fp32 [2 ** bits], only for bitsandbytes (NF4, FP4): the value each integer stands
  for, scaled by its group's absmax (`scales`), zero points unused.
`pagoda.engine.models.quant_formats` turns each checkpoint format into it while loading.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pagoda.engine.layers.weights import copy_into, read_full
from pagoda.kernels import ops

SUPPORTED_BITS = (4, 8)


@dataclass(frozen=True)
class IntQuantConfig:
    """A checkpoint's integer weight quantization, as its config.json's quantization_config says.

    `group_size` -1 means one group per output row (channel-wise); `act_order` that GPTQ ordered
    the columns by importance, so groups are given per column (g_idx); `zero_offset` is what a
    stored zero point lacks (GPTQ's original format stores zero - 1); `stored_zeros` is off for
    compressed-tensors' symmetric schemes, which store none (every zero is 2 ** (bits - 1));
    `codebook` that the integers index a table of values (bitsandbytes) rather than being affine.
    """

    method: str
    bits: int
    group_size: int
    act_order: bool = False
    stored_zeros: bool = True
    zero_offset: int = 0
    codebook: bool = False

    def groups(self, in_features: int) -> tuple[int, int]:
        """(group size, group count) of a weight with `in_features` columns."""
        size = in_features if self.group_size == -1 else self.group_size
        return size, -(-in_features // size)

    def check_words(self, in_features: int) -> None:
        """ValueError unless `in_features` columns fill whole int32 words."""
        if in_features % (32 // self.bits):
            raise ValueError(f"{self.method}: {in_features} input features do not fill int32 words of "
                             f"{32 // self.bits} {self.bits}-bit weights")

    def rank_groups(self, size: int, full: int, what: str = "columns") -> tuple[int, int, bool]:
        """(group size, groups held, whether they are all the groups) for a rank holding `size` of `full`
        input columns: whole groups of its own, or every group where each rank needs them all (act-order,
        where any column may be in any group, and channel-wise scales, one group); ValueError when the
        rank's share splits a group."""
        group_size, groups = self.groups(full)
        every_group = self.act_order or groups == 1
        if not every_group and size % group_size:
            raise ValueError(f"{self.method} groups of {group_size} {what} do not fall on this rank's {size} "
                             "columns; this tensor-parallel size splits a group")
        return group_size, groups if every_group else size // group_size, every_group

    def group_span(self, size: int, start: int, full: int) -> tuple[int, int, int, int]:
        """(group size, first group, groups held, offset) of a rank holding input columns [start, start +
        size) of `full` (an MoE expert's share of its intermediate columns): the groups those columns
        touch, where the rank's first column is `offset` columns into the first; a group split between
        ranks is held by both, each reading its own columns' part."""
        group_size, _ = self.groups(full)
        first = start // group_size
        return group_size, first, (start + size - 1) // group_size - first + 1, start - first * group_size


def pack_along_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 words [N, K * bits / 32] of unsigned integers [N, K] (K a multiple of 32 / bits)."""
    per_word = 32 // bits
    n, k = values.shape
    if k % per_word:
        raise ValueError(f"{k} columns do not fill int32 words of {per_word} {bits}-bit values")
    shifts = torch.arange(per_word, device=values.device, dtype=torch.int64) * bits
    words = (values.to(torch.int64).view(n, k // per_word, per_word) << shifts).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def quantize_int_groups(
    weight: torch.Tensor, bits: int, group_size: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(unsigned integers [N, K], fp32 scales [N, G], uint8 zeros [N, G]) of a weight, group by group
    along K: round-to-nearest within each group's absolute maximum (symmetric) or its range."""
    n, k = weight.shape
    size = k if group_size == -1 else group_size
    if k % size:
        raise ValueError(f"{k} columns are not a whole number of groups of {size}")
    top = (1 << bits) - 1
    w = weight.float().view(n, k // size, size)
    if symmetric:
        scales = (w.abs().amax(-1) / (top // 2)).clamp_min(1e-8)  # e.g. 4 bits: -7..7 around 8
        zeros = torch.full_like(scales, 1 << (bits - 1))
    else:
        low, high = w.amin(-1).clamp_max(0), w.amax(-1).clamp_min(0)
        scales = ((high - low) / top).clamp_min(1e-8)
        zeros = (-low / scales).round().clamp(0, top)
    q = (w / scales[..., None] + zeros[..., None]).round().clamp(0, top)
    return q.view(n, k).to(torch.uint8), scales, zeros.to(torch.uint8)


# bitsandbytes' NF4 table (its `quant_map`): quantiles of a normal distribution scaled to [-1, 1].
NF4 = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)
NF4_GROUP = 64  # bitsandbytes' block
# E2M1's 16 values by their 4-bit code, the sign in the top bit (MXFP4, OCP microscaling).
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def quantize_codebook_groups(weight: torch.Tensor, codebook: torch.Tensor, group_size: int) -> tuple[
        torch.Tensor, torch.Tensor]:
    """(indices [N, K] into `codebook`, fp32 absmax scales [N, G]) of a weight, as bitsandbytes'
    quantize_4bit makes them: each group of `group_size` along K divided by its largest magnitude,
    each value then the nearest code (codes sorted ascending)."""
    n, k = weight.shape
    if k % group_size:
        raise ValueError(f"{k} columns are not a whole number of groups of {group_size}")
    scales = weight.float().view(n, k // group_size, group_size).abs().amax(-1)
    scaled = weight.float() / scales.clamp_min(1e-30).repeat_interleave(group_size, dim=1)
    codebook = codebook.to(weight.device)
    return torch.bucketize(scaled, (codebook[1:] + codebook[:-1]) / 2).to(torch.uint8), scales


def _param(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, loader: Callable[..., None]) -> nn.Parameter:
    param = nn.Parameter(torch.empty(shape, dtype=dtype, device=device), requires_grad=False)
    param.weight_loader = loader
    return param


class IntQuantCapable:
    """What a linear layer needs to hold its weight as packed integers: `hold_int_weights` swaps
    the full-precision weight for qweight, scales, zeros (and g_idx) placed by the layer's
    loaders, and `project` is x @ W^T (+ bias) either way, dequantizing inside the GEMM on GPU."""

    int_quant: IntQuantConfig | None = None
    int_group_size: int = 0  # the group size the kernel divides local column indices by

    def hold_int_weights(
        self, cfg: IntQuantConfig, shape: tuple[int, int], groups: int, group_size: int, scale_dtype: torch.dtype,
        loaders: dict[str, Callable[..., None]],
    ) -> None:
        """Replaces `weight` [N, K] by the integer layout with `groups` scale columns per row."""
        rows, cols = shape
        device = self.weight.device  # type: ignore[attr-defined]
        del self.weight  # type: ignore[attr-defined]
        self.int_quant, self.int_group_size = cfg, group_size
        self.qweight = _param((rows, cols * cfg.bits // 32), torch.int32, device, loaders["qweight"])
        self.scales = _param((rows, groups), scale_dtype, device, loaders["scales"])
        if cfg.stored_zeros:
            self.zeros = _param((rows, groups), torch.uint8, device, loaders["zeros"])
        else:
            self.register_buffer(  # type: ignore[attr-defined]
                "zeros", torch.full((rows, groups), 1 << (cfg.bits - 1), dtype=torch.uint8, device=device))
        self.g_idx = _param((cols,), torch.int32, device, loaders["g_idx"]) if cfg.act_order else None
        self.codebook = _param((1 << cfg.bits,), torch.float32, device, load_whole) if cfg.codebook else None

    def quantize_loaded_nf4(self) -> None:
        """Replaces the loaded full-precision weight by NF4 (bitsandbytes quantization at load, as
        vLLM's `--quantization bitsandbytes` of a full-precision checkpoint): blocks of 64 along this
        rank's K (the whole row where a shard is narrower)."""
        weight = self.weight.data  # type: ignore[attr-defined]
        rows, cols = weight.shape
        group = min(NF4_GROUP, cols)
        cfg = IntQuantConfig(method="bitsandbytes", bits=4, group_size=group, stored_zeros=False, codebook=True)
        cfg.check_words(cols)
        codebook = torch.tensor(NF4, device=weight.device)
        ints, scales = quantize_codebook_groups(weight, codebook, group)
        self.hold_int_weights(cfg, (rows, cols), cols // group, group, torch.float32, {
            name: load_whole for name in ("qweight", "scales", "zeros", "g_idx")})
        for name, value in (("qweight", pack_along_rows(ints, 4)), ("scales", scales), ("codebook", codebook)):
            getattr(self, name).data.copy_(value)

    def project(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.int_quant is None:
            return super().project(x, bias)  # type: ignore[misc]
        return ops.int_linear(x, self.qweight, self.scales, self.zeros, self.g_idx, self.int_quant.bits,
                              self.int_group_size, bias, self.codebook)


def load_whole(param: nn.Parameter, src: Any, *shard: Any) -> None:
    """A tensor every rank, and every part of a fused projection, holds alike (a codebook, GPTQ's g_idx)."""
    copy_into(param, read_full(src))
