"""Beam search against transformers' on the same weights, and its bookkeeping."""

from __future__ import annotations

import pytest

from pagoda.engine.beam_search import BeamSearchParams
from pagoda.engine.fixtures import EOS_TOKEN_ID
from pagoda.engine.llm import LLM
from tests.engine.hf_reference import hf_beam_search

# Prompts whose beams never reach the end-of-sequence token within 6 tokens (past it, transformers stops
# beams by its own heuristic); ENDING's do.
PROMPTS = ["Once upon a time there", "1, 2, 3, 4,", "Hello, my name is", "The quick brown fox"]
ENDING = "In the beginning"


@pytest.fixture(scope="module")
def model_path(tiny_model):
    return tiny_model("llama")


@pytest.fixture(scope="module")
def llm(model_path) -> LLM:
    return LLM(str(model_path), kv_cache_memory_bytes=32 << 20, block_size=4)


@pytest.mark.parametrize("width", [1, 3])
def test_beams_equal_transformers(llm: LLM, model_path, width: int) -> None:
    tokenizer = llm.tokenizer
    params = BeamSearchParams(beam_width=width, max_tokens=6)
    for prompt, result in zip(PROMPTS, llm.beam_search(PROMPTS, params)):
        ids = tokenizer.encode(prompt)
        expected = hf_beam_search(model_path, ids, width, 6)
        # transformers ends a beam at its end-of-sequence token (and pads), which changes the ranking rules:
        assert not any(EOS_TOKEN_ID in beam for beam in expected), "pick prompts whose beams never end"
        assert [beam.output_token_ids for beam in result.sequences] == expected
        scores = [beam.cumulative_logprob for beam in result.sequences]
        assert scores == sorted(scores, reverse=True)
        assert result.sequences[0].text == tokenizer.decode(expected[0], skip_special_tokens=True)
    assert llm.engine.block_manager.usage == 0.0 and not llm.engine.requests


def test_ending_beams_finish_and_are_ranked_by_length_penalty(llm: LLM) -> None:
    """A beam that reaches the end-of-sequence token stops there; with ignore_eos none does. Ranked
    by the plain sum of logprobs (length_penalty 0), a short ending beats every longer beam."""
    prompt = ENDING
    free = llm.beam_search(prompt, BeamSearchParams(beam_width=4, max_tokens=24, length_penalty=0.0))[0].sequences
    ignored = llm.beam_search(prompt, BeamSearchParams(beam_width=4, max_tokens=24, ignore_eos=True))[0].sequences
    assert all(len(beam.output_token_ids) == 24 for beam in ignored)
    ends = [beam.output_token_ids[-1] == EOS_TOKEN_ID for beam in free]
    assert ends[0]
    for beam, ended in zip(free, ends):
        assert ended or len(beam.output_token_ids) == 24
        assert EOS_TOKEN_ID not in beam.output_token_ids[:-1]
    scores = [beam.score(0.0, frozenset({EOS_TOKEN_ID})) for beam in free]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("params, message", [(dict(beam_width=0, max_tokens=4), "beam_width"),
                                             (dict(beam_width=11, max_tokens=4), "beam_width"),
                                             (dict(beam_width=2, max_tokens=0), "max_tokens"),
                                             (dict(beam_width=2, max_tokens=4, length_penalty=-2e16),
                                              "length_penalty"),
                                             (dict(beam_width=2, max_tokens=4, length_penalty=float("nan")),
                                              "length_penalty")])
def test_bad_params_are_refused(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BeamSearchParams(**params)


def test_too_long_a_prompt_is_refused_before_anything_runs(llm: LLM) -> None:
    with pytest.raises(ValueError, match="maximum model length"):
        llm.beam_search("x" * 5000, BeamSearchParams(beam_width=2, max_tokens=4))
    assert not llm.engine.requests


@pytest.mark.parametrize("arch", ["gemma3", "qwen3_5"])
def test_beams_of_a_hybrid_kv_model_equal_transformers(tiny_model, arch: str) -> None:
    """Gemma 3's sliding layer in a KV group of its own (window 8): beams that fork and share prefix
    blocks, the sliding group's included, keep transformers' beams; so do Qwen3.5's, whose recurrent
    layers resume each beam from the prompt's state snapshot."""
    path = tiny_model(arch)
    llm = LLM(str(path), dtype="float32", block_size=4)
    ids = list(range(40, 52))
    result = llm.beam_search([{"prompt_token_ids": ids}], BeamSearchParams(beam_width=3, max_tokens=10,
                                                                            ignore_eos=True))[0]
    expected = hf_beam_search(path, ids, 3, 10)
    assert not any(EOS_TOKEN_ID in beam for beam in expected)
    assert [beam.output_token_ids for beam in result.sequences] == expected
    assert llm.engine.block_manager.usage == 0.0
