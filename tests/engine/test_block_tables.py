"""The block manager's shortcuts for the engine's own time change nothing it decides.

A decode step whose blocks already hold its token skips the general allocation, and the padded block
tables a step reads are gathered from arrays kept in step with the tables' lists. Random workloads run
twice, with the shortcut and with every allocation taking the general path, must schedule, allocate,
cache and evict alike, and every step's arrays must equal its lists padded with zeros.
"""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pagoda.engine.block_manager import BlockManager
from pagoda.engine.scheduler import Scheduler
from pagoda.engine.sequence import FinishReason
from pagoda.engine.step_inputs import StepInputs
from tests.engine.test_block_manager import _new_seq

# A shared stem makes prefix-cache hits; 64 blocks hold any one sequence, not four (preemptions).
STEM = [5, 6, 7, 8]
NUM_BLOCKS = 64


def _trace(windows: tuple[int | None, ...], caching: bool, block_size: int, prompts: list[list[int]],
           max_tokens: int, shortcut: bool) -> list:
    """Every step's schedule, tables and pool state, checking the step's padded tables on the way."""
    bm = BlockManager(NUM_BLOCKS, block_size, caching, windows)
    if not shortcut:
        bm._holds_room = lambda seq, num_tokens: False
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=8)
    for i, prompt in enumerate(prompts):
        sched.add(_new_seq(i, STEM + prompt, max_tokens))
    rng = random.Random(0)
    trace = []
    while sched.has_unfinished:
        out = sched.schedule()
        for g, tables in enumerate(out.block_tables):
            width = tables.shape[1]
            assert tables.tolist() == [seq.block_tables[g] + [0] * (width - len(seq.block_tables[g]))
                                       for seq, _ in out.scheduled]
        trace.append(([(seq.seq_id, n, [list(t) for t in seq.block_tables], seq.num_registered_blocks)
                       for seq, n in out.scheduled], [seq.seq_id for seq in out.preempted], dict(bm.cached),
                      list(bm.free_blocks), list(bm.ref_counts), (bm.stats.queries, bm.stats.hits)))
        for seq, n in out.scheduled:
            seq.num_computed_tokens += n
            if seq.num_computed_tokens == seq.num_tokens:
                seq.append_token(rng.randrange(3))
                if seq.num_output_tokens >= max_tokens:
                    sched.finish(seq, FinishReason.LENGTH)
    return trace


@settings(max_examples=100, deadline=None)
@given(
    windows=st.sampled_from([(None,), (None, 3), (5,)]),
    caching=st.booleans(),
    block_size=st.sampled_from([1, 2, 4]),
    prompts=st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=12), min_size=1, max_size=8),
    max_tokens=st.integers(1, 10),
)
def test_decode_shortcut_and_table_arrays_match_the_general_path(
    windows: tuple[int | None, ...], caching: bool, block_size: int, prompts: list[list[int]], max_tokens: int,
) -> None:
    fast, general = (_trace(windows, caching, block_size, prompts, max_tokens, shortcut) for shortcut in (True, False))
    assert fast == general


def test_a_packed_step_carries_array_block_tables() -> None:
    tables = np.array([[3, 4, 0], [5, 6, 7]], dtype=np.int32)
    inputs = StepInputs([1, 2], [3, 8], [[51, 87]], [1, 1], [4, 9], [tables], 2, [0, 1])
    assert StepInputs.unpack(inputs.pack()).block_tables == [tables.tolist()]
