"""Speculative decoding with a draft model: vLLM's `{"model": DIR, "num_speculative_tokens": k}`.

A small model that shares the target's tokenizer (Llama-3.2-1B for Llama-3.1-8B, Qwen2.5-0.5B for
Qwen2.5-7B, or the target's own first layers) guesses the next k tokens greedily, one cheap pass each;
the target verifies them all in one pass exactly as n-gram drafts are verified (spec_decode.py), so the
output is the target's own, greedy or sampled: a draft only decides how many tokens a pass yields.

The draft keeps its own paged KV cache with the target's block count and block size, addressed by the
target's block tables (a full-attention group's, where sliding-window layers have tables of their own):
a sequence's blocks (and the lookahead blocks the scheduler reserved for its drafts) hold the target's
KV in one cache and the draft's in the other. The draft never trusts
the prefix cache (a shared block may have been filled by a request that never drafted); it catches
up on whatever tokens it has not run for a sequence (`Sequence.draft_computed`): the whole prompt
first, then each step the tokens the target accepted since. A preempted sequence starts over.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pagoda.engine.attention import select_backend
from pagoda.engine.layers.attention import attention_windows, bind_kv_cache, kv_block_bytes, kv_cache_row
from pagoda.engine.model_config import ModelConfig, load_model_config
from pagoda.engine.models.loader import build_model
from pagoda.engine.spec_decode import back_off
from pagoda.engine.step_inputs import StepInputs

if TYPE_CHECKING:
    from pagoda.engine.sequence import Sequence


class DraftModel:
    """The draft model, its KV cache and its greedy drafting."""

    def __init__(self, path: str, target: ModelConfig, device: torch.device, cache_dtype: torch.dtype) -> None:
        self.config = load_model_config(path, dtype=target.dtype, max_model_len=target.max_model_len)
        if self.config.vocab_size > target.vocab_size:
            raise ValueError(f"the draft model's vocabulary ({self.config.vocab_size}) is larger than the target's "
                             f"({target.vocab_size}): a draft must share the target's tokenizer")
        self.device = device
        self.cache_dtype = cache_dtype
        self.model = build_model(self.config, device)
        if not getattr(self.model, "generates", True):
            raise ValueError(f"the draft model ({self.config.architecture}) has no language-model head")
        self.backend = select_backend(device)
        self.kv_cache: torch.Tensor | None = None
        # Which of a sequence's block tables (KV-cache groups) addresses this cache: a full-attention group's.
        self.table_group = 0

    def block_bytes(self, block_size: int) -> int:
        """Bytes of one block of the draft's K and V over all its layers."""
        return kv_block_bytes(self.num_cache_layers, *kv_cache_row(self.model), self.cache_dtype, block_size)

    @property
    def num_cache_layers(self) -> int:
        return len(attention_windows(self.model))

    def allocate(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.kv_cache = torch.zeros(2, self.num_cache_layers, num_blocks, block_size, *kv_cache_row(self.model),
                                    dtype=self.cache_dtype, device=self.device)
        bind_kv_cache(self.model, self.kv_cache, self.backend)

    @torch.inference_mode()
    def propose(self, batch: list[tuple[Sequence, int]]) -> list[list[int]]:
        """Up to `limit` greedy drafts after each sequence's last token: one pass that catches the draft up
        on the sequence's unseen tokens and drafts the first, then one single-token pass per further draft."""
        drafts: list[list[int]] = [[] for _ in batch]
        # Each sequence's next input run: (index in batch, tokens, first position).
        runs = [(i, seq.token_ids[seq.draft_computed:], seq.draft_computed) for i, (seq, _) in enumerate(batch)]
        for _ in range(max(limit for _, limit in batch)):
            runs.sort(key=lambda run: len(run[1]) != 1)  # decodes first, as the attention metadata wants
            tokens = self._greedy([(batch[i][0], ids, start) for i, ids, start in runs])
            next_runs = []
            for (i, ids, start), token in zip(runs, tokens):
                seq, limit = batch[i]
                drafts[i].append(token)
                if len(drafts[i]) < limit:
                    next_runs.append((i, [token], start + len(ids)))
            runs = next_runs
            if not runs:
                break
        for (seq, _), proposed in zip(batch, drafts):
            # The draft's cache now holds every real token and all drafts but the last.
            seq.draft_base = seq.num_tokens
            seq.draft_computed = seq.num_tokens + len(proposed) - 1
        return drafts

    def _greedy(self, runs: list[tuple[Sequence, list[int], int]]) -> list[int]:
        """The draft's most likely token after each run of tokens (placed from its first position on)."""
        bs = self.block_size
        ids, positions, slots, query_lens, seq_lens, rows = [], [], [], [], [], []
        for seq, tokens, start in runs:
            ids.extend(tokens)
            span = range(start, start + len(tokens))
            positions.extend(span)
            slots.extend(seq.block_tables[self.table_group][p // bs] * bs + p % bs for p in span)
            query_lens.append(len(tokens))
            seq_lens.append(start + len(tokens))
            rows.append(len(ids) - 1)
        width = max(len(seq.block_tables[self.table_group]) for seq, _, _ in runs)
        tables = [seq.block_tables[self.table_group] + [0] * (width - len(seq.block_tables[self.table_group]))
                  for seq, _, _ in runs]
        num_decodes = sum(1 for q in query_lens if q == 1)
        inputs = StepInputs(ids, positions, [slots], query_lens, seq_lens, [tables], num_decodes, rows)
        ids_t, pos_t, meta = inputs.to_device(self.device)
        hidden = self.model(ids_t, pos_t, meta)
        logits = self.model.compute_logits(hidden[torch.tensor(rows, device=self.device)])
        return logits.argmax(dim=-1).tolist()


class DraftModelProposer:
    """The scheduler's side of a draft model: drafts for a batch of decoding sequences at once."""

    batched = True

    def __init__(self, draft: DraftModel, num_speculative_tokens: int) -> None:
        self.draft = draft
        self.num_speculative_tokens = num_speculative_tokens

    def propose(self, batch: list[tuple[Sequence, int]]) -> list[list[int]]:
        return self.draft.propose(batch)

    @staticmethod
    def record(seq: Sequence, accepted: int) -> None:
        """The draft's cache stays valid up to the last kept draft it ran; a sequence whose drafts keep
        failing backs off as under n-gram drafting (its catch-up then runs the tokens it skipped)."""
        seq.draft_computed = min(seq.draft_computed, seq.draft_base + accepted)
        back_off(seq, accepted)
