"""Block manager and scheduler invariants under random workloads (property-based).

A fake step stands in for the model: it advances num_computed_tokens exactly
as the engine does and appends a random token to every sequence that reached
the end of its tokens. After every schedule the pool must be exactly
accounted for: each block's reference count equals the number of live block
tables holding it, the free list holds exactly the unreferenced blocks, and
each running sequence owns enough blocks for the tokens it will have computed.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pagoda.engine.block_manager import BlockManager
from pagoda.engine.kv_cache_layout import KVCacheGroup, KVCacheLayout
from pagoda.engine.sampling_params import SamplingParams
from pagoda.engine.scheduler import Scheduler
from pagoda.engine.sequence import FinishReason, Sequence, SequenceStatus


def _check_invariants(bm: BlockManager, live: list[Sequence]) -> None:
    held = Counter(b for seq in live for table in seq.block_tables for b in table if b != bm.null_block)
    for seq in live:
        blocks = [b for table in seq.block_tables for b in table if b != bm.null_block]
        assert len(blocks) == len(set(blocks)), "a block appears twice in a sequence's tables"
        assert len({len(table) for table in seq.block_tables}) <= 1, "every group's table covers the same tokens"
        for g, table in enumerate(seq.block_tables):
            for i, block in enumerate(table):
                # Blocks a query of the next step may read are held, not given back.
                if i >= bm._first_needed(g, seq.num_computed_tokens):
                    assert block != bm.null_block, (g, i)
                # A cached block sits where its tokens are (prefix hits put the right block in each slot).
                if block != bm.null_block and bm.block_hash[block] is not None and i < len(seq.block_hashes):
                    assert bm.block_hash[block] == (g, seq.block_hashes[i])
    assert bm.null_block is None or (bm.ref_counts[bm.null_block] == 0 and bm.null_block not in bm.free_blocks)
    for block in range(bm.num_blocks):
        if block != bm.null_block:
            assert bm.ref_counts[block] == held[block], f"block {block}: refcount {bm.ref_counts[block]} != {held[block]}"
    assert set(bm.free_blocks) == {b for b in range(bm.num_blocks) if bm.ref_counts[b] == 0 and b != bm.null_block}
    for key, block in bm.cached.items():
        assert bm.block_hash[block] == key
    for seq in live:
        if seq.status is SequenceStatus.WAITING:
            assert seq.block_tables == [] and seq.num_computed_tokens == 0


def _new_seq(seq_id: int, tokens: list[int], max_tokens: int) -> Sequence:
    return Sequence(seq_id, f"r{seq_id}", 0, tokens, SamplingParams(max_tokens=max_tokens))


workloads = st.fixed_dictionaries(
    {
        "num_blocks": st.integers(8, 40),
        "block_size": st.sampled_from([1, 2, 4, 8]),
        "budget": st.integers(1, 64),
        "max_seqs": st.integers(1, 8),
        "caching": st.booleans(),
        # Sliding windows of the KV-cache groups (None: full attention): the plain layout, hybrid ones
        # (Gemma 3's), and one where every layer slides (Mistral v0.1's).
        "windows": st.sampled_from([(None,), (None, 3), (None, 2, 7), (5,)]),
        # Prompts over a 3-token alphabet with a common stem share many prefixes.
        "prompts": st.lists(
            st.tuples(st.lists(st.integers(0, 2), min_size=0, max_size=20), st.integers(1, 12)),
            min_size=1,
            max_size=12,
        ),
        "abort_at": st.lists(st.tuples(st.integers(0, 60), st.integers(0, 11)), max_size=4),
        "seed": st.integers(0, 2**16),
    }
)


@settings(max_examples=150, deadline=None)
@given(w=workloads)
def test_random_workloads_keep_the_pool_exact(w: dict) -> None:
    import random

    rng = random.Random(w["seed"])
    bm = BlockManager(w["num_blocks"], w["block_size"], w["caching"], w["windows"])
    sched = Scheduler(bm, w["max_seqs"], w["budget"])
    layout = KVCacheLayout(tuple(KVCacheGroup((i,), window) for i, window in enumerate(w["windows"])), 1)
    # As the engine guarantees, every sequence fits the pool alone: the longest that does.
    capacity = max((n for n in range(1, bm.num_usable * w["block_size"] + 1)
                    if layout.blocks_for(n, w["budget"], w["block_size"]) <= bm.num_usable), default=0)
    assume(capacity >= 2)
    stem = [5, 6, 7, 8, 9, 10, 11]
    seqs = []
    for i, (tail, max_tokens) in enumerate(w["prompts"]):
        max_tokens = min(max_tokens, capacity - 1)
        prompt = (stem + tail)[: capacity - max_tokens]
        seqs.append(_new_seq(i, prompt, max_tokens))
        sched.add(seqs[-1])
    aborts = dict(w["abort_at"])
    for step in range(2000):
        if step in aborts and aborts[step] < len(seqs):
            sched.finish(seqs[aborts[step]], FinishReason.ABORT)
        if not sched.has_unfinished:
            break
        out = sched.schedule()
        live = sched.running + list(sched.waiting)
        _check_invariants(bm, live)
        assert out.num_batched_tokens <= w["budget"]
        assert len(sched.running) <= w["max_seqs"]
        assert out.scheduled, "the scheduler stalled with work pending"
        for seq, n in out.scheduled:
            assert seq.status is SequenceStatus.RUNNING
            # Blocks cover every token computed after this step.
            assert len(seq.block_tables[0]) * bm.block_size >= seq.num_computed_tokens + n
            seq.num_computed_tokens += n
            if seq.num_computed_tokens == seq.num_tokens:
                seq.append_token(rng.randrange(3))
                if seq.num_output_tokens >= seq.params.max_tokens:
                    sched.finish(seq, FinishReason.LENGTH)
    else:
        raise AssertionError("workload did not finish")
    for seq in seqs:
        assert seq.is_finished
        if seq.finish_reason is FinishReason.LENGTH:
            assert seq.num_output_tokens == seq.params.max_tokens
    assert bm.num_free_blocks == bm.num_usable and not any(bm.ref_counts)


def test_prefix_hits_are_shared_and_evicted_lru_only_when_free() -> None:
    bm = BlockManager(num_blocks=6, block_size=2)
    a = _new_seq(0, [1, 2, 3, 4, 5], 4)
    assert bm.match_prefix(a) == [[]] and bm.allocate(a, 5)
    b = _new_seq(1, [1, 2, 3, 4, 9], 4)
    [hits] = bm.match_prefix(b)
    assert hits == a.block_tables[0][:2]
    assert bm.allocate(b, 1, [hits])
    assert b.num_computed_tokens == 4 and b.num_cached_tokens == 4
    assert [bm.ref_counts[x] for x in hits] == [2, 2]
    bm.free(a)
    bm.free(b)
    # Cached blocks survive in the free list...
    c = _new_seq(2, [1, 2, 3, 4], 2)
    assert bm.match_prefix(c) == [hits[:1]]  # the last token is always recomputed
    # ...until the pool needs them: the 4 blocks holding nothing reusable go first,
    old = dict(bm.cached)
    d = _new_seq(3, [20, 21, 22, 23, 24, 25, 26, 27], 1)
    assert bm.allocate(d, 7)
    assert all(bm.cached.get(h) == blk for h, blk in old.items())
    # then cached ones, least recently used first: the tail block [3, 4] before the head [1, 2].
    e = _new_seq(4, [30, 31], 1)
    assert bm.allocate(e, 1)
    assert e.block_tables == [[hits[1]]] and bm.cached.get(bm.block_hash[hits[0]]) == hits[0]
    assert bm.match_prefix(c) == [hits[:1]]
    assert bm.stats.hits == 4 and bm.stats.queries == 5 + 5 + 8 + 2


def test_a_sliding_group_gives_back_what_leaves_its_window() -> None:
    """A full group and a sliding group of window 3, blocks of 2: as a sequence grows, the sliding
    table keeps only the blocks its next query reads (keys from position - 2 on), the rest given back
    as the null block; a prefix hit needs only the sliding blocks inside the window."""
    bm = BlockManager(num_blocks=12, block_size=2, windows=(None, 3))
    assert bm.null_block == 0 and bm.num_usable == 11
    a = _new_seq(0, list(range(9)), 4)
    assert bm.allocate(a, 9)
    full, sliding = [list(table) for table in a.block_tables]
    assert len(full) == len(sliding) == 5 and bm.null_block not in full + sliding
    a.num_computed_tokens = 9  # the step ran
    a.append_token(50)
    assert bm.allocate(a, 1)  # the query at position 9 reads keys 7, 8, 9: blocks 3 and 4
    assert a.block_tables[1][:3] == [bm.null_block] * 3 and a.block_tables[1][3:] == sliding[3:]
    assert bm.num_free_blocks == 11 - 5 - 2
    # A new sequence sharing the first 8 tokens: hits 4 blocks in the full group, and in the sliding
    # group the blocks its first query (position 8, keys 6 to 8) reads: block 3, still cached though freed.
    b = _new_seq(1, list(range(8)) + [99, 98], 4)
    hits = bm.match_prefix(b)
    assert hits == [full[:4], [bm.null_block] * 3 + [sliding[3]]]
    assert bm.allocate(b, 2, hits) and b.num_computed_tokens == 8
    bm.free(a)
    bm.free(b)
    assert bm.num_free_blocks == bm.num_usable and not any(bm.ref_counts)


def test_a_hit_whose_window_was_evicted_is_shortened() -> None:
    """Sliding blocks leave the cache when the pool reuses them: the hit falls back to the longest
    prefix whose window blocks are all still cached."""
    bm = BlockManager(num_blocks=10, block_size=2, windows=(None, 2))
    a = _new_seq(0, [1, 2, 3, 4, 5, 6], 1)
    assert bm.allocate(a, 6)
    full, sliding = [list(table) for table in a.block_tables]
    bm.free(a)
    b = _new_seq(1, [1, 2, 3, 4, 5, 6, 9], 1)
    assert bm.match_prefix(b) == [full, [bm.null_block] * 2 + sliding[2:]]  # position 6 reads keys 5 and 6
    bm.free_blocks.move_to_end(sliding[2], last=False)  # the next block the pool hands out: evicts it
    assert bm.allocate(_new_seq(2, [70], 1), 1)
    assert bm.match_prefix(b) == [full[:2], [bm.null_block, sliding[1]]]


def test_double_free_is_caught() -> None:
    bm = BlockManager(num_blocks=4, block_size=2)
    seq = _new_seq(0, [1, 2, 3], 1)
    assert bm.allocate(seq, 3)
    tables = [list(table) for table in seq.block_tables]
    bm.free(seq)
    seq.block_tables = tables
    try:
        bm.free(seq)
    except RuntimeError as exc:
        assert "freed more often" in str(exc)
    else:
        raise AssertionError("double free went unnoticed")
