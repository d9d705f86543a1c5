"""Linear layers that shard over the tensor-parallel group.

Column-parallel layers split the output features (no communication);
row-parallel layers split the input features and all-reduce. Each parameter
carries a `weight_loader` so the checkpoint loader can place Hugging Face
tensors (q/k/v or gate/up stored separately) into our fused parameters.
Each layer also names its parts (`lora_parts`) so LoRA adapters, which
target q/k/v or gate/up one by one, can add to the right columns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pagoda.engine.distributed import all_reduce, tp_rank, tp_size
from pagoda.engine.layers.fp8 import Fp8Capable, block_span, read_scales
from pagoda.engine.layers.int_quant import IntQuantCapable, IntQuantConfig, load_whole
from pagoda.engine.layers.weights import copy_into, read_full, read_shard
from pagoda.kernels import ops
from pagoda.kernels.reference import RowNorm

if TYPE_CHECKING:
    from pagoda.engine.lora import LayerLoRA, Part


def divide(numerator: int, denominator: int, what: str) -> int:
    if numerator % denominator:
        raise ValueError(f"{what} ({numerator}) is not divisible by tensor_parallel_size {denominator}")
    return numerator // denominator


class ReplicatedLinear(nn.Module):
    """y = x W^T (+ b), the whole weight on every rank: small projections such as an MoE router."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


class ColumnParallelLinear(IntQuantCapable, Fp8Capable, nn.Module):
    """y = x W^T + b with W's rows (output features) split across ranks."""

    split = True  # False: every rank holds every row (ReplicatedProjection)

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features_per_rank = divide(out_features, tp_size(), "output features") if self.split else out_features
        self.weight = nn.Parameter(torch.empty(self.out_features_per_rank, in_features), requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_features_per_rank), requires_grad=False)
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)
        self.lora_in_features = in_features
        self.lora: LayerLoRA | None = None

    part_ids: tuple[Any, ...] = (None,)
    def scale_loader(self, param: nn.Parameter, src: Any, shard_id: Any = None) -> None:
        here, count, there = block_span(*self.rows(shard_id), self.fp8_block[0], "rows")
        part = param.data.narrow(0, here, count)
        copy_into(part, read_scales(src, 0, there, count, part.shape))

    def rows(self, part: Any) -> tuple[int, int, int, int]:
        """Where a part's rows go in this rank's weight and come from in the full one:
        (offset here, rows here, first row in the checkpoint, rows in the checkpoint)."""
        size = self.out_features_per_rank
        if not self.split:
            return 0, size, 0, size
        return 0, size, tp_rank() * size, size * tp_size()

    def weight_loader(self, param: nn.Parameter, src: Any, shard_id: Any = None) -> None:
        """One part's rows (shard_id), or every part's from a checkpoint that stores them fused too
        (Phi-3's qkv_proj and gate_up_proj), each rank taking its share of each part."""
        if shard_id is None and self.part_ids != (None,):
            for part in self.part_ids:
                offset, size, start, _ = self.rows(part)
                copy_into(param.data.narrow(0, offset, size), read_shard(src, 0, self.fused_start(part) + start, size))
            return
        offset, size, start, _ = self.rows(shard_id)
        copy_into(param.data.narrow(0, offset, size), read_shard(src, 0, start, size))

    def fused_start(self, part: Any) -> int:
        """Where a part's rows begin in a checkpoint tensor holding all parts, one after the other."""
        return 0

    def use_int_quant(self, cfg: IntQuantConfig, scale_dtype: torch.dtype) -> None:
        """Holds the weight as packed integers: every tensor of the layout has a row per output
        feature, so each is placed like the weight; g_idx (one per input column) is whole everywhere
        (the parts of a fused projection share their input, hence GPTQ's column order)."""
        cfg.check_words(self.in_features)
        group_size, groups = cfg.groups(self.in_features)
        loaders = {"qweight": self.weight_loader, "scales": self.weight_loader, "zeros": self.weight_loader,
                   "g_idx": load_whole}
        self.hold_int_weights(cfg, (self.out_features_per_rank, self.in_features), groups, group_size, scale_dtype,
                              loaders)

    def lora_parts(self) -> list[Part]:
        return [(part, *self.rows(part)[:2]) for part in self.part_ids]

    def lora_shard(self, part: Any, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of an adapter's A [rank, in] and B [out, rank]: B's rows, as the weight's;
        ValueError for matrices that do not fit the full projection."""
        _, size, start, full = self.rows(part)
        if a.shape[1] != self.in_features or b.shape[0] != full:
            raise ValueError(f"shapes {tuple(a.shape)}, {tuple(b.shape)} do not fit the projection "
                             f"({self.in_features} in, {full} out)")
        return a, b[start : start + size]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(x, self.bias)
        return y if self.lora is None else self.lora.apply(x, y)

    @property
    def fuses_edges(self) -> bool:
        """Whether `normed` can run: one GEMM over a plain weight (not FP8, not integers), no adapter adding to it."""
        return self.fp8_block is None and self.int_quant is None and self.lora is None

    def normed(self, x: torch.Tensor, norm: RowNorm) -> torch.Tensor:
        """self(norm(x)) with the norm inside the GEMM (decode sizes: one launch fewer)."""
        return ops.fused_linear(x, self.weight, self.bias, norm=norm)


class ReplicatedProjection(ColumnParallelLinear):
    """A projection whole on every rank that checkpoints may quantize (FP8, integers) and LoRA may
    target: DeepSeek's low-rank q_a_proj and kv_a_proj_with_mqa, small next to what they feed."""

    split = False


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections of one input fused into one matmul (gate+up)."""

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool = False) -> None:
        self.output_sizes = output_sizes
        self.part_ids = tuple(range(len(output_sizes)))
        super().__init__(in_features, sum(output_sizes), bias)

    def fused_start(self, part: int) -> int:
        return sum(self.output_sizes[:part])

    def rows(self, part: int) -> tuple[int, int, int, int]:
        size = self.output_sizes[part] // tp_size()
        return sum(self.output_sizes[:part]) // tp_size(), size, tp_rank() * size, self.output_sizes[part]


class QKVParallelLinear(ColumnParallelLinear):
    """The fused q/k/v projection; heads split across ranks, KV heads replicated when fewer than ranks.
    `query_width`: a query head's rows in head_dims (2 where each head's query is followed by its output
    gate, Qwen3.5's gated attention). `parts`: the projections it holds, in order: ("q", "k") where
    values are the keys (Gemma 4's global layers), ("q",) where K/V come from another layer."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False,
                 query_width: int = 1, parts: tuple[str, ...] = ("q", "k", "v"), value_head_dim: int | None = None) -> None:
        if parts not in (("q", "k", "v"), ("q", "k"), ("q",)):
            raise ValueError(f"a QKV projection holds q, k and v, q and k, or q alone; not {parts}")
        tp = tp_size()
        self.part_ids = parts
        self.head_dim = head_dim
        # Value heads narrower than query/key heads (MiMo-V2-Flash: 128 against 192).
        self.value_head_dim = value_head_dim or head_dim
        self.query_width = query_width
        self.num_heads = divide(num_heads, tp, "attention heads")
        self.total_kv_heads = num_kv_heads
        if num_kv_heads >= tp:
            self.num_kv_heads = divide(num_kv_heads, tp, "key/value heads")
            self.kv_replicas = 1
        else:
            self.num_kv_heads = 1
            self.kv_replicas = divide(tp, num_kv_heads, "tensor_parallel_size over key/value heads")
        kv_width = (head_dim if "k" in parts else 0) + (self.value_head_dim if "v" in parts else 0)
        out = (self.num_heads * query_width * head_dim + self.num_kv_heads * kv_width) * tp
        super().__init__(hidden_size, out, bias)

    def fused_start(self, part: str) -> int:
        q_total = self.num_heads * tp_size() * self.head_dim * self.query_width
        kv_total = self.total_kv_heads * self.head_dim
        return {"q": 0, "k": q_total, "v": q_total + kv_total}[part]

    def first_head(self, part: str) -> int:
        """The checkpoint's index of this rank's first q head (`part` "q") or first K/V head ("k", "v"),
        KV heads replicated over `kv_replicas` ranks each."""
        if part == "q":
            return tp_rank() * self.num_heads
        return tp_rank() // self.kv_replicas * self.num_kv_heads

    def rows(self, part: str) -> tuple[int, int, int, int]:
        if part not in self.part_ids:
            raise ValueError(f"this projection holds {self.part_ids}, not {part!r}")
        q_size = self.num_heads * self.head_dim * self.query_width
        k_size = self.num_kv_heads * self.head_dim
        if part == "q":
            return 0, q_size, self.first_head(part) * self.head_dim * self.query_width, q_size * tp_size()
        width = self.head_dim if part == "k" else self.value_head_dim
        offset = q_size if part == "k" else q_size + k_size
        return offset, self.num_kv_heads * width, self.first_head(part) * width, self.total_kv_heads * width


class RowParallelLinear(IntQuantCapable, Fp8Capable, nn.Module):
    """y = x W^T + b with W's columns (input features) split; partial sums all-reduced, unless
    `reduce_results` is off because the caller reduces them once together with other partial sums."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, reduce_results: bool = True) -> None:
        super().__init__()
        if bias and not reduce_results:
            raise ValueError("a bias is added after the reduction, so it needs reduce_results")
        self.reduce_results = reduce_results
        self.in_features_per_rank = divide(in_features, tp_size(), "input features")
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, self.in_features_per_rank), requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False)
            self.bias.weight_loader = self._bias_loader
        else:
            self.register_parameter("bias", None)
        self.lora_in_features = self.in_features_per_rank
        self.lora: LayerLoRA | None = None

    def lora_parts(self) -> list[Part]:
        return [(None, 0, self.out_features)]

    def lora_shard(self, part: Any, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of an adapter's A and B: A's columns, as the weight's (B is whole: its
        partial sum joins the all-reduce)."""
        size = self.in_features_per_rank
        if a.shape[1] != size * tp_size() or b.shape[0] != self.out_features:
            raise ValueError(f"shapes {tuple(a.shape)}, {tuple(b.shape)} do not fit the projection "
                             f"({size * tp_size()} in, {self.out_features} out)")
        return a[:, tp_rank() * size : (tp_rank() + 1) * size], b

    def weight_loader(self, param: nn.Parameter, src: Any) -> None:
        size = param.shape[1]
        copy_into(param, read_shard(src, 1, tp_rank() * size, size))

    def scale_loader(self, param: nn.Parameter, src: Any) -> None:
        size = self.in_features_per_rank
        _, count, there = block_span(0, size, tp_rank() * size, size * tp_size(), self.fp8_block[1], "columns")
        copy_into(param, read_scales(src, 1, there, count, param.shape))

    def use_int_quant(self, cfg: IntQuantConfig, scale_dtype: torch.dtype) -> None:
        """Holds the weight as packed integers, this rank's columns of it and its share of the groups
        (see IntQuantConfig.rank_groups)."""
        size = self.in_features_per_rank
        cfg.check_words(size)
        group_size, groups, every_group = cfg.rank_groups(size, size * tp_size())
        words = size * cfg.bits // 32

        def group_columns(param: nn.Parameter, src: Any) -> None:
            copy_into(param, read_full(src) if every_group else read_shard(src, 1, tp_rank() * groups, groups))

        loaders = {
            "qweight": lambda param, src: copy_into(param, read_shard(src, 1, tp_rank() * words, words)),
            "scales": group_columns, "zeros": group_columns,
            "g_idx": lambda param, src: copy_into(param, read_shard(src, 0, tp_rank() * size, size)),
        }
        self.hold_int_weights(cfg, (self.out_features, size), groups, group_size, scale_dtype, loaders)

    def _bias_loader(self, param: nn.Parameter, src: Any) -> None:
        copy_into(param, read_shard(src, 0, 0, param.shape[0]))

    @property
    def fuses_edges(self) -> bool:
        """Whether `added_to` can run: a plain weight (not FP8, not integers), no adapter, no bias, and the
        whole sum on this rank (no all-reduce between the GEMM and the residual add)."""
        return (self.fp8_block is None and self.int_quant is None and self.lora is None and self.bias is None
                and self.reduce_results and tp_size() == 1)

    def added_to(self, x: torch.Tensor, residual: torch.Tensor, gated: bool = False) -> torch.Tensor:
        """residual + self(x), or + self(silu_and_mul(x)) when `gated`, in one GEMM (decode sizes)."""
        return ops.fused_linear(x, self.weight, gated=gated, residual=residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(x, None)
        if self.lora is not None:  # a partial sum like the rest: reduced with it
            y = self.lora.apply(x, y)
        if not self.reduce_results:
            return y
        y = all_reduce(y)
        # The bias is added once, after the reduction, not once per rank.
        return y if self.bias is None else y + self.bias
