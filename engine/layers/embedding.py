"""Vocabulary-parallel token embedding and LM head.

Each rank owns a contiguous slice of the (padded) vocabulary; lookups outside
it contribute zeros to an all-reduce, and logits are all-gathered.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagoda.engine.distributed import all_gather, all_reduce, tp_rank, tp_size
from pagoda.engine.layers.weights import copy_into, read_shard, source_shape


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.per_rank = -(-vocab_size // tp_size())
        self.start = tp_rank() * self.per_rank
        self.weight = nn.Parameter(torch.empty(self.per_rank, hidden_size), requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, src: Any) -> None:
        rows = max(0, min(self.per_rank, source_shape(src)[0] - self.start))
        param.data.zero_()
        if rows:
            copy_into(param.data.narrow(0, 0, rows), read_shard(src, 0, self.start, rows))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if tp_size() == 1:
            return nn.functional.embedding(input_ids, self.weight)
        local = input_ids - self.start
        mine = (local >= 0) & (local < self.per_rank)
        out = nn.functional.embedding(torch.where(mine, local, 0), self.weight)
        out = out * mine.unsqueeze(-1).to(out.dtype)
        return all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """Projects hidden states onto the vocabulary; shares storage with the embedding when tied."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        logits = all_gather(nn.functional.linear(hidden, self.weight), dim=-1)
        return logits[..., : self.vocab_size]
