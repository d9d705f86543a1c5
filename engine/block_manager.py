"""The paged KV cache's bookkeeping: a pool of fixed-size blocks, reference counted.

Prefix caching keys every *full* block by a hash chained over all tokens up
to and including it, so equal prefixes map to equal keys whatever follows.
A block whose last user finished stays in the cache while it sits in the
free list; it is evicted only when the pool needs it, least recently used
first (blocks holding nothing reusable are handed out before any cached one).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from pagoda.engine.sequence import Sequence


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass
class PrefixCacheStats:
    """Counted in tokens, as the `pagoda_prefix_cache_*_total` metrics report them."""

    queries: int = 0
    hits: int = 0


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need at least one block of at least one token, got {num_blocks} x {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self.cached: dict[int, int] = {}  # block hash -> block id
        self.free_blocks: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.stats = PrefixCacheStats()

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by live sequences (cached-but-free blocks count as free)."""
        return 1.0 - len(self.free_blocks) / self.num_blocks

    def _update_hashes(self, seq: Sequence, num_tokens: int) -> None:
        """Extends seq.block_hashes to cover every full block among its first num_tokens tokens."""
        bs = self.block_size
        hashes = seq.block_hashes
        for i in range(len(hashes), num_tokens // bs):
            parent = hashes[-1] if hashes else seq.cache_salt
            hashes.append(hash((parent, tuple(seq.token_ids[i * bs : (i + 1) * bs]))))

    def match_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks holding seq's leading tokens; the last token is always left to compute.

        Nothing for a request asking for prompt logprobs: those need the logits of
        every prompt position, so it computes its whole prompt.
        """
        if not self.enable_prefix_caching or seq.wants_prompt_logprobs:
            return []
        self._update_hashes(seq, seq.num_tokens)
        hits: list[int] = []
        for h in seq.block_hashes[: (seq.num_tokens - 1) // self.block_size]:
            block = self.cached.get(h)
            if block is None:
                break
            hits.append(block)
        return hits

    def allocate(
        self, seq: Sequence, num_new_tokens: int, computed_blocks: list[int] = (), num_lookahead: int = 0,
    ) -> bool:
        """Gives seq the blocks for num_new_tokens more tokens, or nothing and False.

        computed_blocks are prefix-cache hits (from match_prefix) for a sequence
        not yet holding blocks; on success they are taken and counted as computed.
        num_lookahead more slots hold speculative drafts: their blocks are not
        offered to the prefix cache, whose keys cover real tokens only.
        """
        bs = self.block_size
        num_computed = seq.num_computed_tokens + len(computed_blocks) * bs
        needed = (_cdiv(num_computed + num_new_tokens + num_lookahead, bs) - len(seq.block_table)
                  - len(computed_blocks))
        revived = sum(1 for b in computed_blocks if self.ref_counts[b] == 0)
        if max(needed, 0) + revived > len(self.free_blocks):
            return False
        for b in computed_blocks:
            if self.ref_counts[b] == 0:
                del self.free_blocks[b]
            self.ref_counts[b] += 1
        seq.block_table.extend(computed_blocks)
        for _ in range(needed):
            seq.block_table.append(self._take_free_block())
        if self.enable_prefix_caching and seq.num_computed_tokens == 0:
            self.stats.queries += seq.num_tokens
            self.stats.hits += len(computed_blocks) * bs
        seq.num_computed_tokens = num_computed
        if computed_blocks:
            seq.num_cached_tokens = max(seq.num_cached_tokens, num_computed)
        if self.enable_prefix_caching:
            self._register_full_blocks(seq, num_computed + num_new_tokens)
        return True

    def _take_free_block(self) -> int:
        block, _ = self.free_blocks.popitem(last=False)
        h = self.block_hash[block]
        if h is not None:  # evict: its content is about to be overwritten
            del self.cached[h]
            self.block_hash[block] = None
        self.ref_counts[block] = 1
        return block

    def _register_full_blocks(self, seq: Sequence, num_tokens: int) -> None:
        """Publishes blocks that will be full once this step has run.

        Safe within the step: attention backends write every new K/V before
        reading, so a sequence hitting these blocks in the same batch sees them.
        """
        self._update_hashes(seq, num_tokens)
        num_full = num_tokens // self.block_size
        for i in range(seq.num_registered_blocks, num_full):
            block = seq.block_table[i]
            h = seq.block_hashes[i]
            if self.block_hash[block] is None and h not in self.cached:
                self.cached[h] = block
                self.block_hash[block] = h
        seq.num_registered_blocks = max(seq.num_registered_blocks, num_full)

    def free(self, seq: Sequence) -> None:
        """Releases seq's blocks, tail first, so a prefix outlives its own suffix in the cache."""
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] < 0:
                raise RuntimeError(f"block {block} freed more often than allocated")
            if self.ref_counts[block] == 0:
                self.free_blocks[block] = None
                if self.block_hash[block] is None:
                    self.free_blocks.move_to_end(block, last=False)
        seq.block_table = []
        seq.num_computed_tokens = 0
        seq.num_registered_blocks = 0

    def reset_prefix_cache(self) -> None:
        """Forgets every cached block that no live sequence holds."""
        for h, block in list(self.cached.items()):
            if self.ref_counts[block] == 0:
                del self.cached[h]
                self.block_hash[block] = None
