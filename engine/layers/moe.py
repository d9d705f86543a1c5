"""The routed experts of a mixture-of-experts layer, stored stacked for the fused kernel.

Checkpoints store each expert's projections as separate tensors
(`experts.<e>.gate_proj/up_proj/down_proj` for Qwen, `experts.<e>.w1/w3/w2` for
Mixtral) or, as transformers 5 keeps them in memory, stacked
(`experts.gate_up_proj` [E, 2I, H] and `experts.down_proj` [E, H, I]). Both
load into `w13` [E, 2I/tp, H] (gate rows then up rows) and `w2` [E, H, I/tp].
Tensor parallelism splits every expert's intermediate dimension, as a dense
MLP's: each rank computes a partial sum of every token's output, which the
caller all-reduces once together with anything else it adds (a shared expert).
Expert parallelism (vLLM's --enable-expert-parallel) instead gives each rank
E / tp whole experts: a rank runs only the assignments to its own experts
(`expert_map`), and the same all-reduce sums the ranks' contributions; each
expert's GEMMs keep their full width and quantized experts need no split scales.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagoda.engine.distributed import expert_parallel, tp_rank, tp_size
from pagoda.engine.layers.fp8 import block_span, fp8_weight, quantize_fp8_blocks, read_scales, scale_grid
from pagoda.engine.layers.int_quant import FP4_VALUES, IntQuantConfig
from pagoda.engine.layers.linear import divide
from pagoda.engine.layers.weights import copy_into, read_full, read_shard, source_shape
from pagoda.kernels import ops
from pagoda.kernels.reference import EXPERT_ACTIVATIONS, ClampedSwiglu, IntExperts

# Which part of an expert a checkpoint tensor holds, by projection name: 0 gate, 1 up, 2 down.
EXPERT_PARTS = {"gate_proj": 0, "up_proj": 1, "down_proj": 2, "w1": 0, "w3": 1, "w2": 2}
# The part id of a stacked tensor of all experts (transformers 5's in-memory layout).
STACKED = "stacked"


def route(router_logits: torch.Tensor, top_k: int, renormalize: bool, *, scoring: str = "softmax",
          num_groups: int = 1, topk_groups: int = 1, bias: torch.Tensor | None = None,
          scaling: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights [T, k] fp32, expert ids [T, k]): the top k scores, optionally rescaled to sum to 1.

    Scores are the softmax (Mixtral, Qwen, DeepSeek V2) or sigmoids (DeepSeek V3) of the logits.
    DeepSeek's routers split the experts into `num_groups` groups and search only the best
    `topk_groups` of them, a group ranked by its best score or, with a correction `bias` (V3's
    e_score_correction_bias, which steers the choice but not the weights), by the sum of its two
    best biased scores. The chosen scores, optionally renormalized, are multiplied by `scaling`
    (routed_scaling_factor)."""
    scores = torch.softmax(router_logits.float(), dim=-1) if scoring == "softmax" else torch.sigmoid(router_logits.float())
    choice = scores if bias is None else scores + bias.float()
    if num_groups > 1:
        grouped = choice.view(choice.shape[0], num_groups, -1)
        group_scores = grouped.amax(dim=-1) if bias is None else grouped.topk(2, dim=-1).values.sum(dim=-1)
        kept = torch.zeros_like(group_scores, dtype=torch.bool)
        kept.scatter_(1, group_scores.topk(topk_groups, dim=-1).indices, True)
        choice = choice.masked_fill(~kept[:, :, None].expand_as(grouped).reshape_as(choice), float("-inf"))
    ids = choice.topk(top_k, dim=-1).indices
    weights = scores.gather(1, ids)
    if renormalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * scaling if scaling != 1.0 else weights, ids


class FusedMoE(nn.Module):
    """E SwiGLU experts of one layer (GeGLU ones with `activation` "gelu_tanh", ungated relu(up)^2 ones with
    "relu2"); forward returns this rank's partial sum (not reduced).

    GPT-OSS's experts add a `bias` to both GEMMs (w13_bias [E, 2I/tp], gate then up like w13's rows;
    w2_bias [E, H], held by one rank only unless experts are whole per rank, since every rank's partial
    sums are added) and use the `clamped` SwiGLU."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int, *, bias: bool = False,
                 clamped: ClampedSwiglu | None = None, activation: str = "silu") -> None:
        super().__init__()
        if activation not in EXPERT_ACTIVATIONS:
            raise ValueError(f"expert activation {activation!r} is not supported (supported: {EXPERT_ACTIVATIONS})")
        self.clamped = clamped
        self.activation = activation
        # Ungated experts (Nemotron-H's): w13 holds only each expert's up rows, activated as relu(up)^2.
        self.gated = gated = activation != "relu2"
        rows = 2 if gated else 1
        self.num_experts = num_experts
        self.intermediate_size = intermediate_size
        ep = expert_parallel()
        # This rank's experts, [first_expert, first_expert + local_experts), and its share of each one's
        # intermediate columns, [shard_start, shard_start + per_rank).
        self.local_experts = divide(num_experts, tp_size(), "experts") if ep else num_experts
        self.first_expert = tp_rank() * self.local_experts if ep else 0
        self.per_rank = intermediate_size if ep else divide(intermediate_size, tp_size(), "expert intermediate size")
        self.shard_start = 0 if ep else tp_rank() * self.per_rank
        self.w13 = nn.Parameter(torch.empty(self.local_experts, rows * self.per_rank, hidden_size), requires_grad=False)
        self.w2 = nn.Parameter(torch.empty(self.local_experts, hidden_size, self.per_rank), requires_grad=False)
        self.w13.weight_loader = self.weight_loader
        self.w2.weight_loader = self.weight_loader
        # With expert parallelism, each expert's index among this rank's, -1 for another rank's.
        ids = torch.arange(num_experts, dtype=torch.int32) - self.first_expert
        self.register_buffer("expert_map", torch.where((ids >= 0) & (ids < self.local_experts), ids, -1) if ep else None)
        self.w13_bias = self.w2_bias = None
        if bias:
            self.w13_bias = nn.Parameter(torch.empty(self.local_experts, rows * self.per_rank), requires_grad=False)
            self.w2_bias = nn.Parameter(torch.empty(self.local_experts, hidden_size), requires_grad=False)
            self.w13_bias.weight_loader = self.w2_bias.weight_loader = self.weight_loader

    def _local(self, expert: int) -> int | None:
        """This rank's index of a checkpoint's expert; None when another rank holds it."""
        if not 0 <= expert < self.num_experts:
            raise ValueError(f"expert {expert} is out of range for {self.num_experts} experts")
        local = expert - self.first_expert
        return local if local < self.local_experts and local >= 0 else None

    def _local_stack(self, src: Any) -> Any:
        """This rank's experts of a stacked tensor of all of them."""
        if source_shape(src)[0] != self.num_experts:
            raise ValueError(f"stacked expert tensor of shape {source_shape(src)} does not hold "
                             f"{self.num_experts} experts")
        return src if self.local_experts == self.num_experts else read_shard(src, 0, self.first_expert,
                                                                              self.local_experts)

    def load_local_stack(self, param: nn.Parameter, src: Any, part: int,
                         columns: tuple[int, int] | None = None) -> None:
        """This rank's experts' part `part` (0: gate_up, gate rows then up rows; 2: down) of weights, biases or
        their integer layout, given as a stack of this rank's experts: each split across ranks as its parameter
        is (the down projection's by `columns`, (first, count) of its last dim, where they are not its own
        intermediate columns: words or groups)."""
        size, start = self.per_rank, self.shard_start
        if param is self.w2_bias:  # added once to the sum over ranks: by the first, or by an expert's own rank
            whole = self.local_experts != self.num_experts or tp_rank() == 0
            copy_into(param.data, read_full(src) if whole else torch.zeros(param.shape))
        elif part == 2:
            copy_into(param.data, read_shard(src, 2, *(columns or (start, size))))
        else:  # gate_up: the gate rows, then the up rows, each split across ranks (ungated: up rows only)
            for half in (0, 1) if self.gated else (0,):
                rows = read_shard(src, 1, half * self.intermediate_size + start, size)
                copy_into(param.data.narrow(1, half * size, size), rows)

    def weight_loader(self, param: nn.Parameter, src: Any, shard: tuple[int | str, int]) -> None:
        """Loads one expert's part (`shard` = (expert, part)) or, with expert STACKED, that part of all experts."""
        expert, part = shard
        size, start = self.per_rank, self.shard_start
        if expert == STACKED:
            stack = self._local_stack(src)
            shape, hidden = tuple(source_shape(stack)[1:]), self.w2.shape[1]
            rows = (2 if self.gated else 1) * self.intermediate_size
            linear = (rows, hidden) if part == 0 else (hidden, self.intermediate_size)
            if len(shape) == 2 and shape != linear and shape == linear[::-1]:  # [experts, in, out]: Qwen3-VL-MoE's
                stack = read_full(stack).transpose(1, 2)
            self.load_local_stack(param, stack, part)
            return
        expert = self._local(int(expert))
        if expert is None:
            return
        if part == 2:
            copy_into(param.data[expert], read_shard(src, 1, start, size))
        else:
            if not self.gated and part == 0:
                raise ValueError("these experts are ungated: a checkpoint gate projection has no place in them")
            offset = part * size if self.gated else 0
            copy_into(param.data[expert].narrow(0, offset, size), read_shard(src, 0, start, size))

    def _check_gated(self, what: str) -> None:
        if not self.gated:
            raise ValueError(f"{what} checkpoints of ungated experts (Nemotron-H's) are not supported")

    # (rows, columns) of the FP8 scale blocks once the experts are FP8; None: plain weights.
    fp8_block: tuple[int, int] | None = None

    def use_fp8(self, block: tuple[int, int]) -> None:
        """Holds every expert's weights as FP8 with block scales, as the checkpoint stores them."""
        self._check_gated("FP8")
        self.fp8_block = block
        self.w13 = fp8_weight(self.w13, self.weight_loader)
        self.w2 = fp8_weight(self.w2, self.weight_loader)
        self.w13_scale_inv = scale_grid(self.w13, block, self.scale_loader)
        self.w2_scale_inv = scale_grid(self.w2, block, self.scale_loader)

    def scale_loader(self, param: nn.Parameter, src: Any, shard: tuple[int | str, int]) -> None:
        """One expert's part of the scales: gate or up rows of w13's grid, or this rank's columns of w2's."""
        expert, part = shard
        if expert == STACKED:
            raise ValueError("FP8 scales of stacked expert tensors are not supported")
        expert = self._local(int(expert))
        if expert is None:
            return
        size, start = self.per_rank, self.shard_start
        if part == 2:
            _, count, there = block_span(0, size, start, self.intermediate_size, self.fp8_block[1], "expert columns")
            copy_into(param.data[expert], read_scales(src, 1, there, count, param.shape[1:]))
        else:
            here, count, there = block_span(part * size, size, start, self.intermediate_size, self.fp8_block[0],
                                            "expert rows")
            rows = param.data[expert].narrow(0, here, count)
            copy_into(rows, read_scales(src, 0, there, count, rows.shape))

    def quantize_loaded(self, block: tuple[int, int]) -> None:
        """Replaces the loaded experts by their FP8 blocks, expert by expert (FP8 at load)."""
        quantized = [[quantize_fp8_blocks(w[e], block) for e in range(self.local_experts)] for w in (self.w13, self.w2)]
        self.fp8_block = block
        for name, parts in zip(("w13", "w2"), quantized):
            setattr(self, name, nn.Parameter(torch.stack([q for q, _ in parts]), requires_grad=False))
            setattr(self, f"{name}_scale_inv", nn.Parameter(torch.stack([s for _, s in parts]), requires_grad=False))

    int_quant: IntQuantConfig | None = None

    def use_int_quant(self, cfg: IntQuantConfig, scale_dtype: torch.dtype) -> None:
        """Holds every expert's weights as packed integers with group scales and zeros (GPTQ, AWQ or
        compressed-tensors experts, e.g. Qwen3-30B-A3B-GPTQ-Int4) or FP4 codes with power-of-two
        group scales (MXFP4: gpt-oss). A rank's share of each expert's intermediate columns may split a
        group (gpt-oss's 2880 columns over 4 or 8 ranks, groups of 32): both ranks hold its scales, and
        the down projection's kernel counts this rank's columns from their offset into the first group."""
        self._check_gated(cfg.method)
        if cfg.act_order or (cfg.codebook and cfg.method != "mxfp4"):
            raise ValueError(f"{cfg.method} experts with {'act-order (desc_act, g_idx)' if cfg.act_order else 'a codebook'}"
                             " are not supported")
        hidden, size = self.w2.shape[1], self.per_rank
        cfg.check_words(hidden)
        cfg.check_words(size)
        per_word = 32 // cfg.bits
        h_group, h_groups = cfg.groups(hidden)
        i_group, first_group, i_here, offset = cfg.group_span(size, self.shard_start, self.intermediate_size)
        device, experts = self.w13.device, self.local_experts
        del self.w13, self.w2
        self.int_quant = cfg

        def param(shape: tuple[int, ...], dtype: torch.dtype, columns: tuple[int, int] | None) -> nn.Parameter:
            """`columns`: (first, count) of the checkpoint tensor's columns this rank's down projection holds
            (gate and up rows are split by rows; None: every column)."""
            p = nn.Parameter(torch.empty(shape, dtype=dtype, device=device), requires_grad=False)
            p.weight_loader = lambda prm, src, shard: self._int_loader(prm, src, shard, columns)
            return p

        words, groups = (self.shard_start // per_word, size // per_word), (first_group, i_here)
        self.w13_qweight = param((experts, 2 * size, hidden // per_word), torch.int32, None)
        self.w13_scales = param((experts, 2 * size, h_groups), scale_dtype, None)
        self.w13_zeros = param((experts, 2 * size, h_groups), torch.uint8, None)
        self.w2_qweight = param((experts, hidden, size // per_word), torch.int32, words)
        self.w2_scales = param((experts, hidden, i_here), scale_dtype, groups)
        self.w2_zeros = param((experts, hidden, i_here), torch.uint8, groups)
        if not cfg.stored_zeros:
            for name in ("w13_zeros", "w2_zeros"):  # symmetric: every zero point is the middle; a codebook has none
                zeros = None if cfg.codebook else getattr(self, name).data.fill_(1 << (cfg.bits - 1))
                delattr(self, name)
                self.register_buffer(name, zeros)
        # MXFP4's integers stand for FP4's values, the same for every checkpoint.
        self.register_buffer("int_codebook", torch.tensor(FP4_VALUES, dtype=torch.float32, device=device)
                             if cfg.codebook else None)
        self.int_group_sizes = (h_group, i_group)
        self.int_group_offset = offset

    def _int_loader(self, param: nn.Parameter, src: Any, shard: tuple[int | str, int],
                    columns: tuple[int, int] | None) -> None:
        """One expert's part of the integer layout: gate or up rows (any tensor), or, for the down
        projection, this rank's `columns` (first, count) of words or groups (None for the gate_up tensors)."""
        expert, part = shard
        if expert == STACKED:
            raise ValueError("integer-quantized stacked expert tensors are not supported")
        expert = self._local(int(expert))
        if expert is None:
            return
        size, start = self.per_rank, self.shard_start
        if part != 2:
            copy_into(param.data[expert].narrow(0, part * size, size), read_shard(src, 0, start, size))
        else:
            copy_into(param.data[expert], read_shard(src, 1, *columns))

    def forward(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        common = dict(expert_map=self.expert_map, clamped=self.clamped, activation=self.activation,
                      biases=None if self.w13_bias is None else (self.w13_bias, self.w2_bias))
        if self.int_quant is not None:
            quant = IntExperts(self.w13_scales, self.w13_zeros, self.w2_scales, self.w2_zeros, self.int_quant.bits,
                               *self.int_group_sizes, self.int_codebook, self.int_group_offset)
            return ops.fused_moe(x, self.w13_qweight, self.w2_qweight, topk_weights, topk_ids, int_experts=quant,
                                 **common)
        if self.fp8_block is None:
            return ops.fused_moe(x, self.w13, self.w2, topk_weights, topk_ids, **common)
        return ops.fused_moe(x, self.w13, self.w2, topk_weights, topk_ids,
                             self.w13_scale_inv, self.w2_scale_inv, self.fp8_block, **common)
