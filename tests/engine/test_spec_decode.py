"""Speculative decoding with n-gram drafts: outputs are exactly those of plain decoding, greedy or
seeded sampling, under every scheduling regime and tensor parallelism, while repetitive text is
produced several tokens per pass."""

from __future__ import annotations

import pathlib

import pytest

from pagoda.engine.config import EngineConfig
from pagoda.engine.fixtures import make_cyclic_model
from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import SamplingParams
from pagoda.engine.spec_decode import NgramProposer, SpeculativeConfig, accept
from tests.engine.hf_reference import hf_greedy
from tests.engine.test_hf_parity import REGIMES

SPEC = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}
PROMPTS = ["Hello, my name is", "one two three one two three one two", "The quick brown fox jumps over the lazy dog"]


@pytest.fixture(scope="module")
def cyclic(tiny_model, tmp_path_factory) -> pathlib.Path:
    """A model whose greedy text repeats every 5 tokens: drafts are right once a period has passed."""
    return make_cyclic_model(tiny_model("llama"), tmp_path_factory.mktemp("cyclic") / "model", period=5)


def _tokens(llm: LLM, params: SamplingParams) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)]


def test_proposer_takes_the_longest_latest_match() -> None:
    propose = NgramProposer(SpeculativeConfig(3, prompt_lookup_max=3, prompt_lookup_min=1)).propose
    assert propose([1, 2, 3, 9, 1, 2, 3, 7, 1, 2, 3], 5) == [7, 1, 2], "the latest occurrence of [1, 2, 3]"
    assert propose([5, 1, 2, 6, 8, 2], 2) == [6, 8], "no match of length 2 or 3: the last 1-gram's"
    assert propose([5, 1, 2, 6, 8, 2], 1) == [6], "within the limit"
    assert propose([4, 5, 6], 3) == [] and propose([4], 3) == [] and propose([4, 4], 0) == []
    longest_only = NgramProposer(SpeculativeConfig(2, prompt_lookup_max=2, prompt_lookup_min=2)).propose
    assert longest_only([5, 1, 2, 6, 8, 2], 2) == []


def test_accept_keeps_matching_drafts_and_one_more() -> None:
    assert accept([4, 5, 6], [4, 5, 6, 7]) == [4, 5, 6, 7]
    assert accept([4, 5, 6], [4, 9, 6, 7]) == [4, 9]
    assert accept([4, 5, 6], [3, 5, 6, 7]) == [3]


@pytest.mark.parametrize("bad", [
    {"num_speculative_tokens": 4, "method": "eagle"}, {"method": "ngram"}, {"num_speculative_tokens": 0},
    {"num_speculative_tokens": 4, "prompt_lookup_min": 3, "prompt_lookup_max": 2}, {"num_speculative_tokens": "x"},
    {"num_speculative_tokens": 2, "draft_model": "m"},
])
def test_bad_speculative_config_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match="speculative_config|num_speculative_tokens|prompt_lookup"):
        EngineConfig(model="m", speculative_config=bad)


@pytest.mark.parametrize("regime", REGIMES)
def test_greedy_output_is_plain_decodings(cyclic: pathlib.Path, regime: str) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=23, ignore_eos=True)
    llm = LLM(str(cyclic), dtype="float32", speculative_config=SPEC, **REGIMES[regime])
    got = _tokens(llm, params)
    assert got == [hf_greedy(cyclic, llm.tokenizer.encode(p), 23) for p in PROMPTS]
    stats = llm.engine.spec_stats
    assert stats.accepted_tokens > 0.5 * stats.draft_tokens > 0, "periodic text: drafts are mostly right"
    # Fewer passes than tokens: several tokens came out of one pass.
    assert stats.verify_passes < sum(len(t) for t in got) - stats.accepted_tokens + 1
    assert llm.engine.block_manager.num_free_blocks == llm.engine.block_manager.num_usable
    # Blocks filled through drafts were offered to the prefix cache with their real tokens: a rerun hits them.
    assert _tokens(llm, params) == got


def test_seeded_sampling_with_penalties_and_logprobs_is_plain_decodings(tiny_model, tmp_path: pathlib.Path) -> None:
    """Every position sampled as plain decoding samples it: history with the drafts before it,
    min_tokens counting them, the seeded generator rewound past rejected drafts. A softly cyclic
    model samples off its cycle now and then, and its penalties count the drafts."""
    soft = make_cyclic_model(tiny_model("llama"), tmp_path / "soft", period=5, strength=1.0)
    for path in (soft, tiny_model("llama")):
        params = [SamplingParams(temperature=0.7, seed=s, max_tokens=30, ignore_eos=True, logprobs=2,
                                 repetition_penalty=1.05, frequency_penalty=1.5, min_tokens=4) for s in (1, 2, 3)]
        plain = LLM(str(path), dtype="float32").generate(PROMPTS, params)
        spec_llm = LLM(str(path), dtype="float32", speculative_config=SPEC)
        spec = spec_llm.generate(PROMPTS, params)
        for a, b in zip(plain, spec):
            assert a.outputs[0].token_ids == b.outputs[0].token_ids
            for x, y, t in zip(a.outputs[0].logprobs, b.outputs[0].logprobs, a.outputs[0].token_ids):
                assert x[t].logprob == pytest.approx(y[t].logprob, abs=1e-4) and x.keys() == y.keys()
        assert spec_llm.engine.spec_stats.draft_tokens > 0


def test_limits_and_stops_hold(cyclic: pathlib.Path, tiny_model) -> None:
    """max_tokens, the context length, stop tokens inside a run of kept drafts, and stop strings
    (which turn drafts off for their request) end outputs exactly where plain decoding does."""
    plain = LLM(str(cyclic), dtype="float32", max_model_len=40)
    spec = LLM(str(cyclic), dtype="float32", max_model_len=40, speculative_config=SPEC)
    greedy = SamplingParams(temperature=0.0, max_tokens=17, ignore_eos=True)
    cycle = _tokens(plain, greedy)
    stop_at = cycle[0][12]  # a token of the cycle, met again and again: the first one past min_tokens stops
    for params in [greedy, SamplingParams(temperature=0.0, max_tokens=3),
                   SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True),  # stops at max_model_len
                   SamplingParams(temperature=0.0, max_tokens=30, stop_token_ids=[stop_at], min_tokens=8),
                   SamplingParams(temperature=0.0, max_tokens=30, stop=[plain.tokenizer.decode(cycle[1][9:11])])]:
        a, b = plain.generate(PROMPTS, params), spec.generate(PROMPTS, params)
        assert [(o.outputs[0].token_ids, o.outputs[0].text, o.outputs[0].finish_reason) for o in a] == \
            [(o.outputs[0].token_ids, o.outputs[0].text, o.outputs[0].finish_reason) for o in b]
    assert spec.engine.block_manager.num_free_blocks == spec.engine.block_manager.num_usable


def test_under_tensor_parallelism(cyclic: pathlib.Path) -> None:
    llm = LLM(str(cyclic), dtype="float32", tensor_parallel_size=2, speculative_config=SPEC)
    try:
        got = _tokens(llm, SamplingParams(temperature=0.0, max_tokens=15, ignore_eos=True))
    finally:
        llm.engine.shutdown()
    assert got == [hf_greedy(cyclic, llm.tokenizer.encode(p), 15) for p in PROMPTS]
    assert llm.engine.spec_stats.accepted_tokens > 0


def test_each_draft_position_samples_with_the_history_before_it() -> None:
    """Position i of a verification is sampled as if drafts[:i] had been generated: penalties see
    them, and min_tokens counts them (stop and EOS ids suppressed only while still short)."""
    from types import SimpleNamespace

    from pagoda.engine.model_runner import ModelRunner
    from pagoda.engine.sequence import Sequence

    params = SamplingParams(temperature=0.7, min_tokens=5, stop_token_ids=[9], frequency_penalty=1.0)
    seq = Sequence(0, "r", 0, [1, 2, 3], params)
    for token in (10, 11, 12):
        seq.append_token(token)
    runner = SimpleNamespace(eos_token_ids=(2,))
    drafts = [13, 14, 15]
    rows = [ModelRunner._sampling_row(runner, seq, drafts[:i]) for i in range(len(drafts) + 1)]
    assert [list(r.output_token_ids) for r in rows] == [[10, 11, 12], [10, 11, 12, 13], [10, 11, 12, 13, 14],
                                                        [10, 11, 12, 13, 14, 15]]
    assert [set(r.suppressed_token_ids) for r in rows] == [{2, 9}, {2, 9}, set(), set()]
    assert seq.output_token_ids == [10, 11, 12], "the sequence's own history is left alone"


def test_a_sequence_whose_drafts_keep_failing_backs_off() -> None:
    from pagoda.engine.sequence import Sequence

    proposer = NgramProposer(SpeculativeConfig(2))
    seq = Sequence(0, "r", 0, [7, 8, 7, 8, 7], SamplingParams())
    drafted = []
    for _ in range(12):
        drafts = proposer.drafts_for(seq, 2)
        drafted.append(bool(drafts))
        if drafts:
            proposer.record(seq, accepted=0)
    # Waits of 1, 3, 7 steps after the first, second and third miss.
    assert drafted == [True, False, True, False, False, False, True, False, False, False, False, False]
    proposer.record(seq, accepted=1)
    assert seq.spec_wait == 0 and proposer.drafts_for(seq, 2) == [8, 7]


def test_the_proposer_follows_a_growing_sequence() -> None:
    """Its copy of the tokens grows with the sequence (past its first capacity too)."""
    from pagoda.engine.sequence import Sequence

    proposer = NgramProposer(SpeculativeConfig(3, prompt_lookup_max=2))
    seq = Sequence(0, "r", 0, [1, 2, 3], SamplingParams())
    for token in [9] * 70 + [1, 2]:
        seq.append_token(token)
        assert proposer.drafts_for(seq, 3) == proposer.propose(seq.token_ids, 3)
    assert proposer.drafts_for(seq, 3) == [3, 9, 9]
