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

from hypothesis import given, settings
from hypothesis import strategies as st

from pagoda.engine.block_manager import BlockManager
from pagoda.engine.sampling_params import SamplingParams
from pagoda.engine.scheduler import Scheduler
from pagoda.engine.sequence import FinishReason, Sequence, SequenceStatus


def _check_invariants(bm: BlockManager, live: list[Sequence]) -> None:
    held = Counter(b for seq in live for b in seq.block_table)
    for seq in live:
        assert len(seq.block_table) == len(set(seq.block_table)), "a block appears twice in one table"
    for block in range(bm.num_blocks):
        assert bm.ref_counts[block] == held[block], f"block {block}: refcount {bm.ref_counts[block]} != {held[block]}"
    assert set(bm.free_blocks) == {b for b in range(bm.num_blocks) if bm.ref_counts[b] == 0}
    for h, block in bm.cached.items():
        assert bm.block_hash[block] == h
    for seq in live:
        if seq.status is SequenceStatus.WAITING:
            assert seq.block_table == [] and seq.num_computed_tokens == 0


def _new_seq(seq_id: int, tokens: list[int], max_tokens: int) -> Sequence:
    return Sequence(seq_id, f"r{seq_id}", 0, tokens, SamplingParams(max_tokens=max_tokens))


workloads = st.fixed_dictionaries(
    {
        "num_blocks": st.integers(8, 40),
        "block_size": st.sampled_from([1, 2, 4, 8]),
        "budget": st.integers(1, 64),
        "max_seqs": st.integers(1, 8),
        "caching": st.booleans(),
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
    bm = BlockManager(w["num_blocks"], w["block_size"], w["caching"])
    sched = Scheduler(bm, w["max_seqs"], w["budget"])
    capacity = w["num_blocks"] * w["block_size"]
    stem = [5, 6, 7, 8, 9, 10, 11]
    seqs = []
    for i, (tail, max_tokens) in enumerate(w["prompts"]):
        # As the engine guarantees (max_model_len <= pool), every sequence fits the pool alone.
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
            assert len(seq.block_table) * bm.block_size >= seq.num_computed_tokens + n
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
    assert bm.num_free_blocks == bm.num_blocks and not any(bm.ref_counts)


def test_prefix_hits_are_shared_and_evicted_lru_only_when_free() -> None:
    bm = BlockManager(num_blocks=6, block_size=2)
    a = _new_seq(0, [1, 2, 3, 4, 5], 4)
    assert bm.match_prefix(a) == [] and bm.allocate(a, 5)
    b = _new_seq(1, [1, 2, 3, 4, 9], 4)
    hits = bm.match_prefix(b)
    assert hits == a.block_table[:2]
    assert bm.allocate(b, 1, hits)
    assert b.num_computed_tokens == 4 and b.num_cached_tokens == 4
    assert [bm.ref_counts[x] for x in hits] == [2, 2]
    bm.free(a)
    bm.free(b)
    # Cached blocks survive in the free list...
    c = _new_seq(2, [1, 2, 3, 4], 2)
    assert bm.match_prefix(c) == hits[:1]  # the last token is always recomputed
    # ...until the pool needs them: the 4 blocks holding nothing reusable go first,
    old = dict(bm.cached)
    d = _new_seq(3, [20, 21, 22, 23, 24, 25, 26, 27], 1)
    assert bm.allocate(d, 7)
    assert all(bm.cached.get(h) == blk for h, blk in old.items())
    # then cached ones, least recently used first: the tail block [3, 4] before the head [1, 2].
    e = _new_seq(4, [30, 31], 1)
    assert bm.allocate(e, 1)
    assert e.block_table == [hits[1]] and bm.cached.get(bm.block_hash[hits[0]]) == hits[0]
    assert bm.match_prefix(c) == hits[:1]
    assert bm.stats.hits == 4 and bm.stats.queries == 5 + 5 + 8 + 2


def test_double_free_is_caught() -> None:
    bm = BlockManager(num_blocks=4, block_size=2)
    seq = _new_seq(0, [1, 2, 3], 1)
    assert bm.allocate(seq, 3)
    table = list(seq.block_table)
    bm.free(seq)
    seq.block_table = table
    try:
        bm.free(seq)
    except RuntimeError as exc:
        assert "freed more often" in str(exc)
    else:
        raise AssertionError("double free went unnoticed")
