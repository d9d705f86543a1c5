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
    # The rows whose final hidden states the step uses (its logit rows, ascending, once each), where the
    # runner lets a model compute only those past layers that write no K/V (see output_queries); None: every row.
    output_rows_host: list[int] | None = None
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

    def output_queries(self) -> tuple[AttentionMetadata, torch.Tensor] | None:
        """This step with only its output rows as queries, and those rows' indices, for layers that write no
        K/V (Gemma 4's layers sharing an earlier one's): nothing later reads the other rows' states there.
        Each sequence keeps the output rows at the end of its new tokens (the last, a speculative run, or a
        whole prompt whose logprobs it returns) and a sequence without any leaves the batch; its keys are
        unchanged. None where the output rows are every row or not such suffixes (nothing to save, or no rule)."""
        rows = self.output_rows_host
        if rows is None or len(rows) == len(self.slot_mapping):
            return None
        kept, start, wanted = [], 0, set(rows)
        for q_len in self.query_lens_host:
            n = sum(1 for r in range(start, start + q_len) if r in wanted)
            if any(r not in wanted for r in range(start + q_len - n, start + q_len)):
                return None
            kept.append(n)
            start += q_len
        seqs = [i for i, n in enumerate(kept) if n]
        lens = [kept[i] for i in seqs]
        device = self.slot_mapping.device
        index = torch.tensor(seqs, dtype=torch.long, device=device)
        row_index = torch.tensor(rows, dtype=torch.long, device=device)
        starts = [0]
        for n in lens:
            starts.append(starts[-1] + n)
        seq_lens_host = [self.seq_lens_host[i] for i in seqs]

        def reduced(meta: AttentionMetadata) -> AttentionMetadata:
            return AttentionMetadata(
                slot_mapping=meta.slot_mapping[row_index],
                query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
                seq_lens=meta.seq_lens[index], block_tables=meta.block_tables[index],
                num_decodes=sum(1 for i in seqs if i < meta.num_decodes), max_query_len=max(lens, default=0),
                max_seq_len=max(seq_lens_host, default=0), query_lens_host=lens, seq_lens_host=seq_lens_host,
                key_limits=None if meta.key_limits is None else meta.key_limits[row_index],
                key_limits_host=None if meta.key_limits_host is None else [meta.key_limits_host[r] for r in rows],
                state_slots=None if meta.state_slots is None else meta.state_slots[index],
                state_slots_host=None if meta.state_slots_host is None else [meta.state_slots_host[i] for i in seqs])

        base = reduced(self)
        base.groups = [base if group is self else reduced(group) for group in self.groups]
        return base, row_index

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_host)
