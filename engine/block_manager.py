"""The paged KV cache's bookkeeping: a pool of fixed-size blocks, reference counted.

Prefix caching keys every *full* block by a hash chained over all tokens up
to and including it (and over the images behind any image placeholders in it:
multimodal.ImageInputs.block_key), so equal prefixes map to equal keys whatever follows.
A block whose last user finished stays in the cache while it sits in the
free list; it is evicted only when the pool needs it, least recently used
first (blocks holding nothing reusable are handed out before any cached one).

Each sequence holds a block table per KV-cache group (kv_cache_layout.py); all
take blocks from the one pool. A sliding-window group gives back, step by step,
the blocks wholly before what its next query reads, its table keeping the
reserved NULL_BLOCK in their place (never written, so reads of it are zeros);
its prefix-cache hits need only the blocks inside the window of the hit.

A model with recurrent layers (Mamba-2, Gated DeltaNet) also keeps a fixed-size
state per sequence (engine/state_cache.py): `state_slots` of them, one held by
each sequence from its first allocation until its blocks are freed (finished,
aborted or preempted). A prefix-cache hit for such a model reaches only as deep
as a snapshot of those states, saved where a prompt's chunk ends at its last
full block (`snapshot_boundary`) and where a decode completes a block.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from pagoda.engine.sequence import PENDING_TOKEN, Sequence
from pagoda.engine.state_cache import StateCache

# The table entry of a block a sliding-window group gave back: reserved, never handed out, where
# a group slides (a layout of full-attention groups alone reserves nothing).
NULL_BLOCK = 0


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass
class PrefixCacheStats:
    """Counted in tokens, as the `pagoda_prefix_cache_*_total` metrics report them."""

    queries: int = 0
    hits: int = 0


class _TableRows:
    """Every held block table mirrored into a row of a zero-padded int32 array, one array per group, so a
    step's padded tables are one gather: converting the tables' lists element by element cost about as
    much as the rest of preparing a decode step. A row is written when its table changes (an allocation
    that takes or gives back blocks, not most decode steps) and cleared when its sequence frees them."""

    def __init__(self, num_groups: int) -> None:
        self.arrays = [np.zeros((0, 0), dtype=np.int32) for _ in range(num_groups)]
        self.row_of: dict[Sequence, int] = {}
        self.free_rows: list[int] = []

    def write(self, seq: Sequence) -> None:
        row = self.row_of.get(seq)
        if row is None:  # every row below len(row_of) is held when none is free
            row = self.row_of[seq] = self.free_rows.pop() if self.free_rows else len(self.row_of)
        length = len(seq.block_tables[0])
        rows, width = self.arrays[0].shape
        if row >= rows or length > width:  # grown by doubling: rarely, and the copy is paid once
            shape = (rows if row < rows else 2 * row + 2, width if length <= width else max(length, 2 * width))
            self.arrays = [_grown(array, shape) for array in self.arrays]
        for array, table in zip(self.arrays, seq.block_tables):
            array[row, :length] = table

    def clear(self, seq: Sequence) -> None:
        row = self.row_of.pop(seq, None)
        if row is not None:
            for array in self.arrays:
                array[row] = 0
            self.free_rows.append(row)


def _grown(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    grown = np.zeros(shape, dtype=array.dtype)
    grown[: array.shape[0], : array.shape[1]] = array
    return grown


class BlockManager:
    def __init__(
        self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
        windows: tuple[int | None, ...] | list[int | None] = (None,), state_slots: int = 0, snapshot_slots: int = 0,
    ) -> None:
        self.windows = list(windows)
        self.null_block = NULL_BLOCK if any(w is not None for w in self.windows) else None
        reserved = 0 if self.null_block is None else 1
        if num_blocks - reserved < 1 or block_size < 1:
            raise ValueError(f"need at least one block of at least one token, got {num_blocks} x {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        # A cached block's key: (group, hash); a group's blocks hold only its own layers' K/V.
        self.block_hash: list[tuple[int, int] | None] = [None] * num_blocks
        self.cached: dict[tuple[int, int], int] = {}  # (group, block hash) -> block id
        self.free_blocks: OrderedDict[int, None] = OrderedDict((b, None) for b in range(reserved, num_blocks))
        self.num_usable = num_blocks - reserved
        self.stats = PrefixCacheStats()
        self.states = (StateCache(state_slots, snapshot_slots if enable_prefix_caching else 0)
                       if state_slots else None)
        self.table_rows = _TableRows(len(self.windows))

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by live sequences (cached-but-free blocks count as free)."""
        return 1.0 - len(self.free_blocks) / self.num_usable

    def _first_needed(self, group: int, position: int) -> int:
        """The first block of `group` a query at `position` (or later) reads: 0 for full attention,
        the block of the earliest key inside the window for a sliding group."""
        window = self.windows[group]
        return 0 if window is None else max(0, position - window + 1) // self.block_size

    def _update_hashes(self, seq: Sequence, num_tokens: int) -> None:
        """Extends seq.block_hashes to cover every full block among its first num_tokens tokens."""
        bs = self.block_size
        hashes = seq.block_hashes
        for i in range(len(hashes), num_tokens // bs):
            parent = hashes[-1] if hashes else seq.cache_salt
            tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            if seq.num_pending and PENDING_TOKEN in tokens:
                break  # a token still in flight: the block is hashed once its value arrives
            images = seq.images.block_key(i * bs, (i + 1) * bs) if seq.images is not None else ()
            hashes.append(hash((parent, tokens, images) if images else (parent, tokens)))

    def match_prefix(self, seq: Sequence) -> list[list[int]]:
        """Per group, the table of cached blocks holding seq's leading tokens (NULL_BLOCK where a
        sliding group needs none); the last token is always left to compute.

        Nothing for a request asking for prompt logprobs: those need the logits of
        every prompt position, so it computes its whole prompt.
        """
        empty: list[list[int]] = [[] for _ in self.windows]
        if not self.enable_prefix_caching or seq.wants_prompt_logprobs:
            return empty
        self._update_hashes(seq, seq.num_tokens)
        hashes = seq.block_hashes[: (seq.num_tokens - 1) // self.block_size]
        length = len(hashes)
        for g, window in enumerate(self.windows):
            if window is None:
                length = next((i for i, h in enumerate(hashes[:length]) if (g, h) not in self.cached), length)
        # The longest hit for which every sliding group still caches the blocks inside its window (and
        # recurrent layers have a snapshot of their states at its end).
        while length > 0 and not (all(
            all((g, h) in self.cached for h in hashes[self._first_needed(g, length * self.block_size) : length])
            for g, window in enumerate(self.windows) if window is not None
        ) and (self.states is None or self.states.snapshot_of(hashes[length - 1]) is not None)):
            length -= 1
        if length == 0:
            return empty
        if self.states is not None:
            seq.restore_snapshot = self.states.snapshot_of(hashes[length - 1])
        return [[self.null_block] * (first := self._first_needed(g, length * self.block_size))
                + [self.cached[g, h] for h in hashes[first:length]] for g in range(len(self.windows))]

    def allocate(
        self, seq: Sequence, num_new_tokens: int, computed_blocks: list[list[int]] | None = None,
        num_lookahead: int = 0,
    ) -> bool:
        """Gives seq the blocks for num_new_tokens more tokens, or nothing and False.

        computed_blocks are prefix-cache hits (from match_prefix) for a sequence
        not yet holding blocks; on success they are taken and counted as computed.
        num_lookahead more slots hold speculative drafts: their blocks are not
        offered to the prefix cache, whose keys cover real tokens only. Sliding
        groups first give back the blocks no query of this step or later reads.
        """
        bs = self.block_size
        hits = computed_blocks if computed_blocks and computed_blocks[0] else None
        if hits is None and self._holds_room(seq, num_new_tokens + num_lookahead):
            if self.enable_prefix_caching:
                self._register_full_blocks(seq, seq.num_computed_tokens + num_new_tokens)
            return True
        tables = seq.block_tables or [[] for _ in self.windows]
        num_hit = len(hits[0]) if hits else 0
        num_computed = seq.num_computed_tokens + num_hit * bs
        length = _cdiv(num_computed + num_new_tokens + num_lookahead, bs)
        # Every step of every sequence comes here: the window term is skipped where no group has a window.
        dropped = [[i for i in range(self._first_needed(g, num_computed))
                    if i < len(table) and table[i] != self.null_block]
                   for g, table in enumerate(tables)] if self.null_block is not None else ()
        released = sum(1 for g, idx in enumerate(dropped) for i in idx if self.ref_counts[tables[g][i]] == 1)
        needed = sum(max(0, length - len(table) - (len(hits[g]) if hits else 0)) for g, table in enumerate(tables))
        revived = len({b for table in hits or () for b in table if b != self.null_block and self.ref_counts[b] == 0})
        if needed + revived > len(self.free_blocks) + released:
            return False
        if self.states is not None and seq.state_slot is None:
            seq.state_slot = self.states.take()
            if seq.state_slot is None:
                return False
        if hits and seq.restore_snapshot is not None:  # the hit resumes from the states at its end
            self.states.restore(seq.restore_snapshot, seq.state_slot)
        seq.restore_snapshot = None
        seq.block_tables = tables
        for g, idx in enumerate(dropped):
            for i in reversed(idx):
                self._release(tables[g][i])
                tables[g][i] = self.null_block
        for table, hit in zip(tables, hits or ()):  # every hit first: a new block must not evict one
            for b in hit:
                if b != self.null_block:
                    if self.ref_counts[b] == 0:
                        del self.free_blocks[b]
                    self.ref_counts[b] += 1
                table.append(b)
        for table in tables:
            while len(table) < length:
                table.append(self._take_free_block())
        self.table_rows.write(seq)
        if self.enable_prefix_caching and seq.num_computed_tokens == 0:
            self.stats.queries += seq.num_tokens
            self.stats.hits += num_hit * bs
        seq.num_computed_tokens = num_computed
        if hits:
            seq.num_cached_tokens = max(seq.num_cached_tokens, num_computed)
        if self.enable_prefix_caching:
            end = num_computed + num_new_tokens
            self._register_full_blocks(seq, end)
            boundary = self.snapshot_boundary(seq)
            # The prompt's boundary, and every block a decode completes (a chat's next turn repeats the answer).
            if boundary is not None and (end == boundary or (end > seq.num_prompt_tokens and end % bs == 0)):
                self.states.save(seq.state_slot, seq.block_hashes[end // bs - 1])
        return True

    def _holds_room(self, seq: Sequence, num_tokens: int) -> bool:
        """Whether seq's blocks already hold num_tokens more tokens and allocating would change nothing else:
        no group slides (no block to give back), no recurrent state to take or save, its first allocation
        (which the prefix-cache stats count) behind it. Most decode steps: only the blocks they fill are
        left to register. Every group's table has the same length (each allocation extends all alike)."""
        tables = seq.block_tables
        return (self.null_block is None and self.states is None and seq.num_computed_tokens > 0 and bool(tables)
                and len(tables[0]) * self.block_size >= seq.num_computed_tokens + num_tokens)

    def snapshot_boundary(self, seq: Sequence) -> int | None:
        """Where a prompt's recurrent states are saved for the prefix cache: the end of its last full block
        before its final token (None: no such block, or nothing to save)."""
        if self.states is None or not self.states.caches_prefixes or seq.wants_prompt_logprobs:
            return None
        boundary = (seq.num_prompt_tokens - 1) // self.block_size * self.block_size
        return boundary or None

    def _take_free_block(self) -> int:
        block, _ = self.free_blocks.popitem(last=False)
        key = self.block_hash[block]
        if key is not None:  # evict: its content is about to be overwritten
            del self.cached[key]
            self.block_hash[block] = None
        self.ref_counts[block] = 1
        return block

    def _release(self, block: int) -> None:
        """One holder fewer; an unheld block goes to the free list, at the front if it caches nothing."""
        self.ref_counts[block] -= 1
        if self.ref_counts[block] < 0:
            raise RuntimeError(f"block {block} freed more often than allocated")
        if self.ref_counts[block] == 0:
            self.free_blocks[block] = None
            if self.block_hash[block] is None:
                self.free_blocks.move_to_end(block, last=False)

    def _register_full_blocks(self, seq: Sequence, num_tokens: int) -> None:
        """Publishes blocks that will be full once this step has run.

        Safe within the step: attention backends write every new K/V before
        reading, so a sequence hitting these blocks in the same batch sees them.
        """
        if num_tokens // self.block_size <= seq.num_registered_blocks:
            return  # no block newly full (most decode steps): every full block is hashed and registered already
        self._update_hashes(seq, num_tokens)
        num_full = min(num_tokens // self.block_size, len(seq.block_hashes))
        for i in range(seq.num_registered_blocks, num_full):
            h = seq.block_hashes[i]
            for g, table in enumerate(seq.block_tables):
                block = table[i]
                if block != self.null_block and self.block_hash[block] is None and (g, h) not in self.cached:
                    self.cached[g, h] = block
                    self.block_hash[block] = (g, h)
        seq.num_registered_blocks = max(seq.num_registered_blocks, num_full)

    def free(self, seq: Sequence) -> None:
        """Releases seq's blocks, tail first, so a prefix outlives its own suffix in the cache."""
        for table in seq.block_tables:
            for block in reversed(table):
                if block != self.null_block:
                    self._release(block)
        seq.block_tables = []
        self.table_rows.clear(seq)
        if seq.state_slot is not None:
            self.states.give_back(seq.state_slot)
            seq.state_slot = None
        seq.num_computed_tokens = 0
        seq.num_registered_blocks = 0

    def padded_tables(self, seqs: list[Sequence]) -> list[np.ndarray]:
        """Per group, the block tables of seqs (each holding blocks) in their order: [len(seqs), the longest
        table's length] int32, zeros past each table's end."""
        rows = [self.table_rows.row_of[seq] for seq in seqs]
        width = max(len(seq.block_tables[0]) for seq in seqs)
        return [array[rows, :width] for array in self.table_rows.arrays]

    def reset_prefix_cache(self) -> None:
        """Forgets every cached block that no live sequence holds, and every state snapshot."""
        if self.states is not None:
            self.states.reset()
        for key, block in list(self.cached.items()):
            if self.ref_counts[block] == 0:
                del self.cached[key]
                self.block_hash[block] = None
