"""Per-step attention metadata, shared by every layer of one forward pass.

The batch is ordered decodes first (one new token each), then prefill
chunks, so a backend can run a single decode kernel over a contiguous prefix
of the batch and a varlen prefill kernel over the rest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] int64: cache slot of each new token (-1: padding)
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32: offsets of each sequence's new tokens
    seq_lens: torch.Tensor  # [num_seqs] int32: context length after this step
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32: physical blocks, padded
    num_decodes: int  # the first num_decodes sequences have exactly one new token
    max_query_len: int
    max_seq_len: int
    # Host copies for backends that loop on the host (the PyTorch reference);
    # built from the same lists, so no device synchronisation is needed.
    query_lens_host: list[int]
    seq_lens_host: list[int]
    # [num_tokens] int32, in steps where some token sees past itself (an image attending to its whole
    # self, Gemma 3): the last key position each new token may see; None: each sees up to itself.
    key_limits: torch.Tensor | None = None
    key_limits_host: list[int] | None = None
    # Recurrent layers (Mamba): each sequence's state slot, [num_seqs] int64 and on the host; None
    # for models without such layers.
    state_slots: torch.Tensor | None = None
    state_slots_host: list[int] | None = None
    # With several KV-cache groups, each group's metadata (its own slot mapping and block tables, the
    # rest shared), the first being this one; empty with one group.
    groups: list[AttentionMetadata] = field(default_factory=list, repr=False, compare=False)

    def for_group(self, group: int) -> AttentionMetadata:
        return self.groups[group] if self.groups else self

    def causal(self) -> AttentionMetadata:
        """This (one group's) metadata with every token seeing up to itself, whatever images see past
        themselves elsewhere (Gemma 4's global layers keep images causal)."""
        if self.key_limits is None:
            return self
        return dataclasses.replace(self, key_limits=None, key_limits_host=None, groups=[])

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_host)
