"""Speculative decoding with a draft model (vLLM's {"model": DIR, "num_speculative_tokens": k}): outputs
are exactly the target's plain decoding, greedy or seeded sampling, under every scheduling regime; the
draft's own KV cache, addressed by the target's block tables, stays right through catch-up, prefix hits and
preemption (a draft that is the target itself has every draft accepted); drafts that are mostly wrong
cost passes, never tokens."""

from __future__ import annotations

import pathlib

import pytest

from pagoda.engine.fixtures import make_cyclic_model, make_truncated_model
from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import SamplingParams
from tests.engine.hf_reference import hf_greedy
from tests.engine.test_hf_parity import REGIMES

PROMPTS = ["Hello, my name is", "one two three one two three one two", "The quick brown fox jumps over the lazy dog"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=23, ignore_eos=True)


@pytest.fixture(scope="module")
def target(tiny_model, tmp_path_factory) -> pathlib.Path:
    """A 4-layer model whose layers barely move the residual stream: its first layer alone guesses it well."""
    base = tiny_model("llama", num_hidden_layers=4)
    return make_cyclic_model(base, tmp_path_factory.mktemp("target") / "model", period=7, strength=2.0)


@pytest.fixture(scope="module")
def draft(target: pathlib.Path, tmp_path_factory) -> pathlib.Path:
    return make_truncated_model(target, tmp_path_factory.mktemp("draft") / "model", num_layers=1)


def _spec(model: pathlib.Path, k: int = 4) -> dict:
    return {"model": str(model), "num_speculative_tokens": k}


def _tokens(llm: LLM, params: SamplingParams | list[SamplingParams]) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)]


@pytest.mark.parametrize("regime", REGIMES)
def test_greedy_output_is_the_targets(target: pathlib.Path, draft: pathlib.Path, regime: str) -> None:
    llm = LLM(str(target), dtype="float32", speculative_config=_spec(draft), **REGIMES[regime])
    got = _tokens(llm, GREEDY)
    assert got == [hf_greedy(target, llm.tokenizer.encode(p), GREEDY.max_tokens) for p in PROMPTS]
    stats = llm.engine.spec_stats
    assert stats.accepted_tokens > 0.5 * stats.draft_tokens > 0, "the first layer guesses the model well"
    assert stats.verify_passes < sum(len(t) for t in got) - stats.accepted_tokens + 1
    if regime == "preemption":
        assert llm.engine.scheduler.num_preemptions > 0
    assert llm.engine.block_manager.num_free_blocks == llm.engine.block_manager.num_usable
    assert _tokens(llm, GREEDY) == got, "a rerun hits the prefix cache; the draft recomputes its own KV"


@pytest.mark.parametrize("regime", ["default", "chunked-with-prefix-cache", "preemption"])
def test_the_target_as_its_own_draft_has_every_draft_accepted(target: pathlib.Path, regime: str) -> None:
    """Same weights, same greedy choices: any draft refused would be the draft's cache gone wrong
    (a missed catch-up, a stale position after a partial acceptance, a preempted sequence's old state)."""
    llm = LLM(str(target), dtype="float32", speculative_config=_spec(target, k=3), **REGIMES[regime])
    _tokens(llm, GREEDY)
    _tokens(llm, GREEDY)
    stats = llm.engine.spec_stats
    assert stats.draft_tokens > 0 and stats.accepted_tokens == stats.draft_tokens


def test_seeded_sampling_is_plain_decodings(target: pathlib.Path, tiny_model) -> None:
    """Sampled positions are drawn as plain decoding draws them; a draft of unrelated weights (mostly
    wrong) only costs passes."""
    params = [SamplingParams(temperature=0.8, seed=s, max_tokens=25, ignore_eos=True, logprobs=1) for s in (1, 2, 3)]
    plain = _tokens(LLM(str(target), dtype="float32"), params)
    for draft_dir in (target, tiny_model("llama")):
        spec = LLM(str(target), dtype="float32", speculative_config=_spec(draft_dir))
        assert _tokens(spec, params) == plain
        assert spec.engine.spec_stats.draft_tokens > 0


def test_limits_hold(target: pathlib.Path, draft: pathlib.Path) -> None:
    """max_tokens and the context length cut drafting where plain decoding stops."""
    plain = LLM(str(target), dtype="float32", max_model_len=40)
    spec = LLM(str(target), dtype="float32", max_model_len=40, speculative_config=_spec(draft, k=6))
    for params in [SamplingParams(temperature=0.0, max_tokens=3), SamplingParams(temperature=0.0, max_tokens=100,
                                                                                  ignore_eos=True)]:
        assert [(o.outputs[0].token_ids, o.outputs[0].finish_reason) for o in plain.generate(PROMPTS, params)] == \
            [(o.outputs[0].token_ids, o.outputs[0].finish_reason) for o in spec.generate(PROMPTS, params)]


def test_the_draft_shares_the_kv_budget(target: pathlib.Path, draft: pathlib.Path) -> None:
    """The same budget holds fewer blocks: each block is also the draft's (one layer beside four)."""
    budget = 4 << 20
    alone = LLM(str(target), dtype="float32", kv_cache_memory_bytes=budget).engine.runner.num_blocks
    runner = LLM(str(target), dtype="float32", kv_cache_memory_bytes=budget,
                 speculative_config=_spec(draft)).engine.runner
    assert runner.num_blocks == budget // (runner._block_bytes())
    assert runner.num_blocks == pytest.approx(alone * 4 / 5, abs=1)
    assert runner.draft.kv_cache.shape[2] == runner.kv_cache.shape[2]


def test_bad_drafts_are_refused(target: pathlib.Path, tiny_model, tmp_path: pathlib.Path) -> None:
    big_vocab = tiny_model("llama", vocab_size=1024)
    with pytest.raises(ValueError, match="vocabulary .* is larger than the target's"):
        LLM(str(target), dtype="float32", speculative_config=_spec(big_vocab))
    with pytest.raises(ValueError, match="tensor_parallel_size 1 only"):
        LLM(str(target), dtype="float32", tensor_parallel_size=2, speculative_config=_spec(target))
    with pytest.raises(ValueError, match="method draft_model takes the draft's directory"):
        LLM(str(target), speculative_config={"method": "draft_model", "num_speculative_tokens": 2})
    with pytest.raises(ValueError, match="not a model directory"):
        LLM(str(target), speculative_config=_spec(tmp_path))


@pytest.mark.parametrize("regime", ["default", "chunked-with-prefix-cache", "preemption"])
def test_every_draft_is_the_draft_models_own_greedy_continuation(tiny_model, tmp_path: pathlib.Path, regime: str,
                                                                  monkeypatch) -> None:
    """What the draft proposes after any history (partial acceptances, prefix hits, preemptions) is what the
    draft model alone continues that history with: its cache never holds a rejected draft's KV as context.
    A random 4-layer model and its first three layers agree now and then, so verifications keep part of the
    drafts (and sequences whose drafts fail back off, then catch up on the tokens they skipped)."""
    from pagoda.engine.draft_model import DraftModel

    target = tiny_model("llama", num_hidden_layers=4)
    draft = make_truncated_model(target, tmp_path / "draft", num_layers=3)
    proposals: list[tuple[list[int], list[int]]] = []
    propose = DraftModel.propose

    def recording(self, batch):
        histories = [list(seq.token_ids) for seq, _ in batch]
        drafts = propose(self, batch)
        proposals.extend(zip(histories, drafts))
        return drafts

    monkeypatch.setattr(DraftModel, "propose", recording)
    llm = LLM(str(target), dtype="float32", speculative_config=_spec(draft), **REGIMES[regime])
    _tokens(llm, GREEDY)
    stats = llm.engine.spec_stats
    assert 0 < stats.accepted_tokens < stats.draft_tokens, "some drafts were refused: partial acceptances happened"
    for history, drafts in proposals[::3]:
        assert drafts == hf_greedy(draft, history, len(drafts))
