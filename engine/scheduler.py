"""Continuous batching: which sequences run this step, and how many tokens each.

Every sequence simply has tokens it has not computed yet; a step gives each
running sequence its share (one token for a decode, a chunk for a prefill)
under the token budget, then admits waiting sequences while budget and
max_num_seqs allow. With speculative decoding, a decoding sequence also gets
draft tokens to verify (see spec_decode.py), in slots beyond its real tokens. A long prompt is thus prefilled across steps while the
decodes keep going (chunked prefill). When blocks run out, the most recently
admitted sequence is preempted: its blocks are freed and it will recompute,
keeping the tokens it has generated, so no request is lost.

Under the "priority" policy (vLLM's), requests wait in order of their
priority (lower first), then arrival, and the victim of a preemption is the
running sequence of the lowest priority, latest arrival.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pagoda.engine.block_manager import BlockManager
from pagoda.engine.config import SCHEDULING_POLICIES
from pagoda.engine.sequence import FinishReason, Sequence, SequenceStatus
from pagoda.engine.spec_decode import backing_off

if TYPE_CHECKING:
    from pagoda.engine.draft_model import DraftModelProposer
    from pagoda.engine.lora import LoRAAdapter
    from pagoda.engine.spec_decode import NgramProposer


@dataclass
class SchedulerOutput:
    # (sequence, number of new tokens), decodes (one new token) first.
    scheduled: list[tuple[Sequence, int]] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    # LoRA adapters of every running sequence, scheduled this step or not: their slots are best kept.
    running_adapters: frozenset[LoRAAdapter] = frozenset()
    # Recurrent layers' state copies (engine/state_cache.py): (snapshot, slot) restored before the forward
    # pass, (slot, snapshot) saved after it.
    state_restores: list[tuple[int, int]] = field(default_factory=list)
    state_saves: list[tuple[int, int]] = field(default_factory=list)
    # Per KV-cache group, the scheduled sequences' block tables in `scheduled`'s order, zero-padded to one
    # width (BlockManager.padded_tables).
    block_tables: list[np.ndarray] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(n for _, n in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


def _chunk(seq: Sequence, start: int, count: int) -> int:
    """How many of `count` tokens from `start` a prefill chunk may take: all, but never part of an image
    whose tokens attend to each other both ways (multimodal.ImageInputs.chunk_end), nor part of an
    encoder's prompt (all of it or nothing)."""
    if seq.bidirectional and start < seq.num_prompt_tokens:
        return count if start + count >= seq.num_prompt_tokens else 0
    if seq.images is None or start >= seq.num_prompt_tokens:
        return count
    return seq.images.chunk_end(start, start + count) - start


def _rank(seq: Sequence) -> tuple[int, float, int]:
    """Priority order: lower priority value first, then earlier arrival."""
    return seq.priority, seq.arrival_time, seq.seq_id


class Scheduler:
    def __init__(
        self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int, max_loras: int = 1,
        policy: str = "fcfs", proposer: NgramProposer | DraftModelProposer | None = None,
        max_model_len: int = 1 << 62,
    ) -> None:
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be positive")
        if policy not in SCHEDULING_POLICIES:
            raise ValueError(f"scheduling policy must be one of {', '.join(SCHEDULING_POLICIES)}, got {policy!r}")
        self.policy = policy
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_loras = max_loras  # distinct LoRA adapters among the running sequences
        self.proposer = proposer  # speculative drafts for decoding sequences, if enabled
        self.max_model_len = max_model_len
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self._enqueue(seq, front=False)

    def _enqueue(self, seq: Sequence, front: bool) -> None:
        """FCFS: at the back, or the front for a preempted sequence; priority: in priority order."""
        if self.policy == "priority":
            self.waiting.insert(bisect.bisect_right([_rank(s) for s in self.waiting], _rank(seq)), seq)
        elif front:
            self.waiting.appendleft(seq)
        else:
            self.waiting.append(seq)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        i = 0
        drafting: list[tuple[Sequence, int, int]] = []  # a draft model's batch: (seq, limit, its place in out)
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            if seq.num_pending and seq.at_length_limit(self.max_model_len, counting_pending=True):
                # It ends once its token in flight arrives (async scheduling).
                i += 1
                continue
            num_new = self._chunk(seq, seq.num_computed_tokens, min(seq.num_tokens - seq.num_computed_tokens, budget))
            if num_new == 0:  # its next chunk is an image (or an encoder's prompt) that does not fit this step's budget
                i += 1
                continue
            limit = self._draft_limit(seq, budget) if num_new == 1 else 0
            if limit > 0 and self.proposer.batched:
                # A draft model drafts for the whole batch at once, once the lookahead slots are reserved.
                if not backing_off(seq) and self.block_manager.allocate(seq, 1, num_lookahead=limit):
                    drafting.append((seq, limit, len(out.scheduled)))
                    out.scheduled.append((seq, 1))
                    budget -= 1 + limit
                    i += 1
                    continue
                limit = 0
            drafts = self.proposer.drafts_for(seq, limit) if limit > 0 else []
            if drafts and self.block_manager.allocate(seq, 1, num_lookahead=len(drafts)):
                seq.spec_token_ids = drafts
                out.scheduled.append((seq, 1 + len(drafts)))
                budget -= 1 + len(drafts)
                i += 1
                continue
            while not self.block_manager.allocate(seq, num_new):
                # Only a sequence not yet scheduled in this step can give its blocks back.
                victim = max(self.running[i:], key=_rank) if self.policy == "priority" else self.running[-1]
                self.running.remove(victim)
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # it gave its own blocks back; running[i] is now the next one
            out.scheduled.append((seq, num_new))
            budget -= num_new
            i += 1
        if drafting:
            for (seq, limit, place), drafts in zip(drafting, self.proposer.propose([(s, n) for s, n, _ in drafting])):
                seq.spec_token_ids = drafts
                out.scheduled[place] = (seq, 1 + len(drafts))
                budget += limit - len(drafts)
        # Admitting new work while preempting would only thrash the cache. A
        # sequence whose adapter finds no free slot waits, without holding up the others.
        adapters = {seq.lora for seq in self.running if seq.lora is not None}
        passed: list[Sequence] = []
        while not out.preempted and self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if seq.lora is not None and seq.lora not in adapters and len(adapters) >= self.max_loras:
                passed.append(self.waiting.popleft())
                continue
            hits = self.block_manager.match_prefix(seq) if seq.num_computed_tokens == 0 else None
            num_cached = len(hits[0]) * self.block_manager.block_size if hits else 0
            start = seq.num_computed_tokens + num_cached
            num_new = self._chunk(seq, start, min(seq.num_tokens - start, budget))
            if num_new == 0 or not self.block_manager.allocate(seq, num_new, hits):
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            if seq.lora is not None:
                adapters.add(seq.lora)
            out.scheduled.append((seq, num_new))
            budget -= num_new
        self.waiting.extendleft(reversed(passed))
        out.running_adapters = frozenset(adapters)
        out.scheduled.sort(key=lambda item: item[1] != 1)
        if out.scheduled:
            out.block_tables = self.block_manager.padded_tables([seq for seq, _ in out.scheduled])
        if self.block_manager.states is not None:
            out.state_restores, out.state_saves = self.block_manager.states.drain()
        return out

    def _chunk(self, seq: Sequence, start: int, count: int) -> int:
        """`_chunk`'s tokens, ending at seq's snapshot boundary where they would cross it, so that the
        recurrent layers' states there can be saved for the prefix cache."""
        count = _chunk(seq, start, count)
        boundary = self.block_manager.snapshot_boundary(seq)
        if boundary is not None and start < boundary < start + count:
            return boundary - start
        return count

    def _draft_limit(self, seq: Sequence, budget: int) -> int:
        """How many speculative drafts a decoding sequence may verify: within its budget, max_tokens and
        context. None for constrained outputs (the grammar would have to walk the drafts) and for stop
        strings (tokens past one are only found once detokenized, after the step)."""
        if self.proposer is None or seq.grammar is not None or seq.params.stop:
            return 0
        limit = min(budget, self.max_model_len - seq.num_tokens) - 1
        if seq.params.max_tokens is not None:
            limit = min(limit, seq.params.max_tokens - seq.num_output_tokens - 1)
        return min(limit, self.proposer.num_speculative_tokens)

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.spec_token_ids = []
        seq.draft_computed = 0  # its blocks, the draft model's cache with them, are gone
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self._enqueue(seq, front=True)

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """Ends seq (done, stopped or aborted) wherever it is, returning its blocks at once."""
        if seq.status is SequenceStatus.FINISHED:
            return
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.drop_pending()
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
