"""Async scheduling: each step launched before its predecessor's tokens are read back must give exactly what
synchronous steps give (greedy and seeded sampling, EOS, max_tokens and stop-string ends, n > 1, preemption,
prefix-cache hits on generated text), fall back to synchronous steps for requests that need their tokens on
the host, and leave nothing held after aborts."""

from __future__ import annotations

import pytest

from pagoda.engine.fixtures import EOS_TOKEN_ID
from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import SamplingParams
from tests.engine.hf_reference import hf_greedy

PROMPTS = ["Hello, my name is", "The quick brown fox", "Un café crème", "東京は日本の首都です。", "1, 2, 3,"]


@pytest.fixture(scope="module")
def model_path(tiny_model):
    return tiny_model("llama")


def _engine(model_path, overlap: bool, **options) -> LLM:
    return LLM(str(model_path), dtype="float32", block_size=4, async_scheduling=overlap, **options)


def _launches(llm: LLM) -> list[int]:
    """Counts the engine's overlapped launches (steps launched before the previous one's tokens arrived)."""
    runner, count = llm.engine.runner, [0]
    launch = runner.launch

    def counted(*args, **kwargs):
        count[0] += 1
        return launch(*args, **kwargs)

    runner.launch = counted
    return count


def _completions(outputs) -> list:
    return [[(c.token_ids, c.text, c.finish_reason, c.stop_reason) for c in out.outputs] for out in outputs]


def _mixed_params(stop: str) -> list[SamplingParams]:
    return [
        SamplingParams(temperature=0.0, max_tokens=23, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=40),  # may end on EOS
        SamplingParams(temperature=0.9, seed=5, max_tokens=17, stop_token_ids=[EOS_TOKEN_ID + 7]),
        SamplingParams(n=2, temperature=1.0, seed=11, max_tokens=12, ignore_eos=True, min_tokens=5),
        SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True, stop=stop),
    ]


def test_overlapped_steps_give_what_synchronous_steps_give(model_path) -> None:
    sync, overlapped = _engine(model_path, False), _engine(model_path, True)
    text = sync.generate(PROMPTS[4], SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True))[0].outputs[0].text
    params = _mixed_params(stop=text[8:12])
    launches = _launches(overlapped)
    want = sync.generate(PROMPTS, params)
    got = overlapped.generate(PROMPTS, params)
    assert launches[0] > 20
    assert _completions(got) == _completions(want)
    assert got[0].outputs[0].token_ids == hf_greedy(model_path, got[0].prompt_token_ids, 23)
    assert got[4].outputs[0].finish_reason == "stop" and got[4].outputs[0].stop_reason == text[8:12]
    engine = overlapped.engine
    assert not engine.has_unfinished_requests()
    engine.core_step()  # collects the step launched after the last request ended
    assert engine.in_flight is None and engine.block_manager.num_free_blocks == engine.block_manager.num_usable


def test_preemption_and_prefix_hits_on_generated_text(model_path) -> None:
    """A pool too small for every sequence forces preemptions while a step is in flight; a prompt that
    repeats a prompt and its answer then reuses the answer's blocks (hashed once its tokens arrived)."""
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    runs = []
    for overlap in (False, True):
        llm = _engine(model_path, overlap, num_kv_blocks=48, max_model_len=128)
        outs = llm.generate(PROMPTS, params)
        assert llm.engine.scheduler.num_preemptions > 0
        follow_up = {"prompt_token_ids": outs[1].prompt_token_ids + outs[1].outputs[0].token_ids + [7, 8]}
        again = llm.generate(follow_up, SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True))[0]
        runs.append((_completions(outs), _completions([again]), again.num_cached_tokens))
    assert runs[1] == runs[0]
    assert runs[1][2] >= 40  # the answer's full blocks came from the cache


def test_requests_needing_their_tokens_run_synchronously_beside_the_rest(model_path) -> None:
    """Logprobs and penalties read each token on the host: while such a request is live, steps wait for
    their tokens (the step in flight is collected first); the results are unchanged."""
    params = [SamplingParams(temperature=0.0, max_tokens=15, ignore_eos=True),
              SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=2),
              SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True, repetition_penalty=1.3)]
    sync, overlapped = _engine(model_path, False), _engine(model_path, True)
    want = sync.generate(PROMPTS[:3], params)
    got = overlapped.generate(PROMPTS[:3], params)
    assert _completions(got) == _completions(want)
    assert [[lp.keys() for lp in o.outputs[0].logprobs] for o in got[1:2]] == \
        [[lp.keys() for lp in o.outputs[0].logprobs] for o in want[1:2]]
    launches = _launches(overlapped)
    overlapped.generate(PROMPTS[:2], params[:1] * 2)
    assert launches[0] > 0


def test_aborts_and_streams_while_a_step_is_in_flight(model_path) -> None:
    """Streamed (cumulative) outputs never show a placeholder; an aborted request frees its blocks at once,
    and its step in flight is collected without effect."""
    llm = _engine(model_path, True)
    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    engine.add_request("kept", PROMPTS[0], params)
    engine.add_request("gone", PROMPTS[1], params)
    seen = []
    for _ in range(6):
        for out in engine.step():
            seen.append(out.outputs[0].token_ids)
    assert engine.in_flight is not None and seen and all(-1 not in ids for ids in seen)
    assert engine.abort_request("gone")
    final = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            assert out.request_id == "kept" and -1 not in out.outputs[0].token_ids
            final = out
    engine.core_step()
    assert final.outputs[0].token_ids == hf_greedy(model_path, final.prompt_token_ids, 20)
    assert engine.in_flight is None and engine.block_manager.num_free_blocks == engine.block_manager.num_usable
