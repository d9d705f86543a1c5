"""The offline API's contract: sampling, stopping, logprobs, n > 1, aborts and bad input."""

from __future__ import annotations

import pytest

from pagoda.engine.fixtures import EOS_TOKEN_ID
from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import RequestOutputKind, SamplingParams
from pagoda.engine.tokenizer import bad_word_sequences
from tests.engine.hf_reference import hf_greedy, hf_logprobs

PROMPTS = ["Hello, my name is", "The quick brown fox", "Un café crème", "東京は日本の首都です。"]


@pytest.fixture(scope="module")
def model_path(tiny_model):
    return tiny_model("llama")


@pytest.fixture(scope="module")
def llm(model_path) -> LLM:
    return LLM(str(model_path), dtype="float32", block_size=4)


def _assert_idle(llm: LLM) -> None:
    engine = llm.engine
    assert not engine.has_unfinished_requests()
    assert not engine.scheduler.running and not engine.scheduler.waiting
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_usable


def test_seeded_sampling_does_not_depend_on_the_batch(llm: LLM) -> None:
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=16, ignore_eos=True)
    alone = llm.generate(PROMPTS[0], params)[0].outputs[0].token_ids
    others = SamplingParams(temperature=0.7, max_tokens=9, ignore_eos=True)
    batched = llm.generate([PROMPTS[1], PROMPTS[0], PROMPTS[2]], [others, params, others])[1].outputs[0].token_ids
    assert alone == batched
    other_seed = llm.generate(PROMPTS[0], SamplingParams(temperature=1.0, top_p=0.9, seed=99, max_tokens=16, ignore_eos=True))
    assert other_seed[0].outputs[0].token_ids != alone


def test_n_completions_are_distinct_and_reproducible(llm: LLM) -> None:
    params = SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=12, ignore_eos=True)
    first = llm.generate(PROMPTS[1], params)[0]
    second = llm.generate(PROMPTS[1], params)[0]
    assert [o.index for o in first.outputs] == [0, 1, 2]
    assert [o.token_ids for o in first.outputs] == [o.token_ids for o in second.outputs]
    assert len({tuple(o.token_ids) for o in first.outputs}) == 3
    _assert_idle(llm)


def test_top_k_one_is_greedy(llm: LLM, model_path) -> None:
    out = llm.generate(PROMPTS[2], SamplingParams(temperature=1.5, top_k=1, max_tokens=8, ignore_eos=True))[0]
    assert out.outputs[0].token_ids == hf_greedy(model_path, out.prompt_token_ids, 8)


def _greedy_text(llm: LLM, prompt: str, max_tokens: int = 24) -> tuple[str, list[int]]:
    out = llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))[0].outputs[0]
    return out.text, out.token_ids


@pytest.mark.parametrize("include", [False, True])
def test_stop_string_ends_generation(llm: LLM, include: bool) -> None:
    text, _ = _greedy_text(llm, PROMPTS[0])
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip(), "pick a visible stop string"
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, stop=[stop], include_stop_str_in_output=include)
    out = llm.generate(PROMPTS[0], params)[0].outputs[0]
    cut = text.index(stop)
    assert out.text == (text[: cut + len(stop)] if include else text[:cut])
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert len(out.token_ids) < 24


def test_stop_token_id_ends_generation(llm: LLM) -> None:
    _, ids = _greedy_text(llm, PROMPTS[1])
    stop_id = ids[3]
    out = llm.generate(PROMPTS[1], SamplingParams(temperature=0.0, max_tokens=24, stop_token_ids=[stop_id]))[0].outputs[0]
    assert out.token_ids == ids[: ids.index(stop_id) + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_id


def test_allowed_token_ids_bound_every_token(llm: LLM) -> None:
    _, free = _greedy_text(llm, PROMPTS[0], 12)
    allowed = sorted(set(free[1:]) | {3, 17})  # the unconstrained first token is not among them
    assert free[0] not in allowed
    for params in (SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, allowed_token_ids=allowed),
                   SamplingParams(temperature=1.5, seed=3, max_tokens=12, ignore_eos=True, allowed_token_ids=allowed)):
        out = llm.generate(PROMPTS[0], params)[0].outputs[0]
        assert len(out.token_ids) == 12 and set(out.token_ids) <= set(allowed)


def _occurs(part: list[int], tokens: list[int]) -> bool:
    return any(tokens[i:i + len(part)] == part for i in range(len(tokens)))


def test_bad_words_are_never_completed(llm: LLM) -> None:
    """A banned word's tokens never appear in order, whether it is one token or several."""
    _, free = _greedy_text(llm, PROMPTS[1], 16)
    tokenizer = llm.engine.tokenizer

    def spelled(width: int) -> str:
        """A word of the free completion, `width` tokens long as the ban tokenizes it."""
        for i in range(len(free) - width):
            word = tokenizer.decode(free[i:i + width]).strip()
            if word and any(len(seq) == width and _occurs(seq, free) for seq in bad_word_sequences(tokenizer, [word])):
                return word
        raise AssertionError(f"no word of {width} tokens in {free}")

    for word in (spelled(1), spelled(2)):
        out = llm.generate(PROMPTS[1], SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True,
                                                      bad_words=[word]))[0].outputs[0]
        assert not any(_occurs(seq, out.token_ids) for seq in bad_word_sequences(tokenizer, [word])), word
        assert out.token_ids != free  # the ban changed the completion


def test_eos_stops_unless_min_tokens_or_ignore_eos(llm: LLM) -> None:
    push_eos = {EOS_TOKEN_ID: 100.0}
    out = llm.generate(PROMPTS[0], SamplingParams(temperature=0.0, max_tokens=10, logit_bias=push_eos))[0].outputs[0]
    assert out.token_ids == [EOS_TOKEN_ID] and out.finish_reason == "stop" and out.stop_reason is None
    assert out.text == ""
    out = llm.generate(PROMPTS[0], SamplingParams(temperature=0.0, max_tokens=10, min_tokens=3, logit_bias=push_eos))[0]
    assert len(out.outputs[0].token_ids) == 4 and out.outputs[0].token_ids[-1] == EOS_TOKEN_ID
    out = llm.generate(PROMPTS[0], SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True, logit_bias=push_eos))[0]
    assert out.outputs[0].token_ids == [EOS_TOKEN_ID] * 5 and out.outputs[0].finish_reason == "length"


def test_logprobs_match_transformers(llm: LLM, model_path) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=3, prompt_logprobs=2)
    out = llm.generate(PROMPTS[3], params)[0]
    completion = out.outputs[0]
    ref = hf_logprobs(model_path, out.prompt_token_ids + completion.token_ids)
    n_prompt = len(out.prompt_token_ids)
    for i, (token, entry) in enumerate(zip(completion.token_ids, completion.logprobs)):
        row = ref[n_prompt - 1 + i]
        assert entry[token].rank == 1
        assert entry[token].logprob == pytest.approx(row[token].item(), abs=1e-4)
        top = [tid for tid, lp in sorted(entry.items(), key=lambda kv: kv[1].rank or 99)][:3]
        assert top == row.topk(3).indices.tolist()
    assert completion.cumulative_logprob == pytest.approx(sum(e[t].logprob for e, t in zip(completion.logprobs, completion.token_ids)))
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == n_prompt
    for pos in range(1, n_prompt):
        token = out.prompt_token_ids[pos]
        assert out.prompt_logprobs[pos][token].logprob == pytest.approx(ref[pos - 1][token].item(), abs=1e-4)
        assert len(out.prompt_logprobs[pos]) >= 2
    _assert_tokens_named(llm, [*completion.logprobs, *out.prompt_logprobs[1:]])


def _assert_tokens_named(llm: LLM, entries: list[dict]) -> None:
    """Every logprob carries its token's text (named by the output processor)."""
    tokenizer = llm.engine.tokenizer
    assert all(lp.decoded_token == tokenizer.decode([tid]) for entry in entries for tid, lp in entry.items())


def test_prompt_logprobs_survive_prefix_cache_and_chunking(model_path) -> None:
    llm = LLM(str(model_path), dtype="float32", block_size=4, max_num_batched_tokens=5)
    llm.generate(PROMPTS[0] + " and more", SamplingParams(max_tokens=1))  # warm the prefix cache
    out = llm.generate(PROMPTS[0] + " and more", SamplingParams(max_tokens=1, prompt_logprobs=0))[0]
    ref = hf_logprobs(model_path, out.prompt_token_ids)
    assert out.num_cached_tokens == 0
    for pos in range(1, len(out.prompt_token_ids)):
        token = out.prompt_token_ids[pos]
        assert out.prompt_logprobs[pos][token].logprob == pytest.approx(ref[pos - 1][token].item(), abs=1e-4)
    _assert_tokens_named(llm, out.prompt_logprobs[1:])  # filled over several prefill chunks


def test_streamed_deltas_add_up_to_the_text(llm: LLM) -> None:
    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    engine.add_request("s", PROMPTS[3], params)
    deltas, final = [], None
    while engine.has_unfinished_requests():
        for out in engine.step():
            deltas.append(out.outputs[0].delta_text)
            final = out
    text = final.outputs[0].text
    assert "".join(deltas) == text
    assert text == llm.tokenizer.decode(final.outputs[0].token_ids, skip_special_tokens=True)


def _outputs_per_step(llm: LLM, params: SamplingParams, prompt: str) -> list[list]:
    llm.engine.add_request("k", prompt, params)
    steps = []
    while llm.engine.has_unfinished_requests():
        steps.append(llm.engine.step())
    return steps


def test_final_only_requests_make_one_output(llm: LLM) -> None:
    """FINAL_ONLY: no output until the request ends, then the same completion a cumulative request ends with
    (n > 1 included); with stop strings the text is still made step by step, so they still stop it."""
    cumulative = SamplingParams(n=2, temperature=1.0, seed=3, max_tokens=12, ignore_eos=True)
    final_only = SamplingParams(n=2, temperature=1.0, seed=3, max_tokens=12, ignore_eos=True,
                                output_kind=RequestOutputKind.FINAL_ONLY)
    every = _outputs_per_step(llm, cumulative, PROMPTS[0])
    steps = _outputs_per_step(llm, final_only, PROMPTS[0])
    assert len(steps) == len(every) and all(len(outs) == 1 for outs in every)
    assert [len(outs) for outs in steps] == [0] * (len(steps) - 1) + [1]
    last, want = steps[-1][0], every[-1][0]
    assert last.finished and [(c.token_ids, c.text) for c in last.outputs] == [(c.token_ids, c.text) for c in want.outputs]
    text, _ = _greedy_text(llm, PROMPTS[1])
    stop = text[10:14]
    stopped = _outputs_per_step(llm, SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, stop=stop,
                                                    output_kind=RequestOutputKind.FINAL_ONLY), PROMPTS[1])
    assert stopped[-1][-1].outputs[0].text == text[: text.index(stop)]
    _assert_idle(llm)
    with pytest.raises(ValueError, match="output_kind"):
        SamplingParams(output_kind=1)


def test_stop_string_text_is_never_streamed(llm: LLM) -> None:
    text, _ = _greedy_text(llm, PROMPTS[1])
    stop = text[10:14]
    engine = llm.engine
    engine.add_request("h", PROMPTS[1], SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, stop=stop))
    streamed = ""
    while engine.has_unfinished_requests():
        for out in engine.step():
            streamed += out.outputs[0].delta_text
            assert stop not in streamed
    assert streamed == text[: text.index(stop)]


def test_abort_frees_blocks_and_spares_the_rest(llm: LLM, model_path) -> None:
    engine = llm.engine
    greedy = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(f"a{i}", prompt, greedy)
    engine.step()
    engine.step()
    assert engine.abort_request("a1") and not engine.abort_request("a1")
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    assert set(done) == {"a0", "a2", "a3"}
    for out in done.values():
        assert out.outputs[0].token_ids == hf_greedy(model_path, out.prompt_token_ids, 10)
    _assert_idle(llm)


@pytest.mark.parametrize(
    ("prompt", "params", "message"),
    [
        ("x" * 5000, None, "maximum model length"),
        ([1, 2, 10_000], None, "outside the vocabulary"),
        ([], None, "empty"),
        ([1, -3], None, "outside the vocabulary"),
        ("hi", {"temperature": -1.0}, "temperature"),
        ("hi", {"top_p": 0.0}, "top_p"),
        ("hi", {"max_tokens": 0}, "max_tokens"),
        ("hi", {"logprobs": 1000}, "logprobs"),
        ("hi", {"logit_bias": {10_000: 1.0}}, "logit_bias"),
        ("hi", {"allowed_token_ids": [1, 10_000]}, "allowed_token_ids"),
        ("hi", {"allowed_token_ids": []}, "allowed_token_ids"),
        ("hi", {"bad_words": ["ok", " "]}, "bad_words"),
        (3.5, None, "prompt"),
    ],
)
def test_bad_input_is_refused_before_scheduling(llm: LLM, model_path, prompt, params, message: str) -> None:
    good = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
    with pytest.raises(ValueError, match=message):
        sampling = [good, SamplingParams(**params) if params else good]
        llm.generate([PROMPTS[0], prompt], sampling)
    _assert_idle(llm)  # the good prompt of the same call was not queued either
    out = llm.generate(PROMPTS[0], good)[0]
    assert out.outputs[0].token_ids == hf_greedy(model_path, out.prompt_token_ids, 5)


def test_chat_uses_the_template(llm: LLM) -> None:
    messages = [{"role": "user", "content": "Hello!"}]
    out = llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))[0]
    expected = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    expected = list(expected["input_ids"] if hasattr(expected, "keys") else expected)
    assert out.prompt_token_ids == expected
    with pytest.raises(ValueError, match="chat template"):
        llm.chat([{"role": "wizard", "content": "x"}])
    # Tools reach the template, as HF passes them; the template's own parameters may not be overridden.
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    out = llm.chat(messages, SamplingParams(max_tokens=1), tools=tools)[0]
    expected = llm.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True)
    assert out.prompt_token_ids == list(expected["input_ids"] if hasattr(expected, "keys") else expected)
    assert len(out.prompt_token_ids) > len(llm.chat(messages, SamplingParams(max_tokens=1))[0].prompt_token_ids)
    with pytest.raises(ValueError, match="chat_template_kwargs cannot set chat_template"):
        llm.chat(messages, chat_template_kwargs={"chat_template": "{{ 1 }}"})


def test_unsupported_architecture_is_a_clear_error(tmp_path, model_path) -> None:
    import json
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(model_path, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["architectures"] = ["GPTNeoXForCausalLM"]
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="LlamaForCausalLM"):
        LLM(str(bad))


def test_request_metrics_are_ordered(llm: LLM) -> None:
    out = llm.generate(PROMPTS[0], SamplingParams(max_tokens=3, ignore_eos=True))[0]
    m = out.metrics
    assert m.arrival_time <= m.first_scheduled_time <= m.first_token_time <= m.finished_time


def test_stop_strings_applied_a_step_late_change_nothing_visible(llm: LLM) -> None:
    """As the server does it: text is made after the step and the stop reaches the engine one step later."""
    text, ids = _greedy_text(llm, PROMPTS[2])
    stop = text[8:11]
    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, stop=stop)
    engine.add_request("late", PROMPTS[2], params)
    pending, final, streamed = [], None, ""
    while engine.has_unfinished_requests():
        raw = engine.core_step()
        for s in pending:  # last step's stops arrive only now
            engine.stop_sequence(s.request_id, s.index, s.stop)
        outputs, pending = engine.output_processor.process(raw)
        for out in outputs:
            streamed += out.outputs[0].delta_text
            final = out if out.finished else final
    assert final is not None and final.outputs[0].text == streamed == text[: text.index(stop)]
    assert final.outputs[0].finish_reason == "stop" and final.outputs[0].stop_reason == stop
    assert final.outputs[0].token_ids == ids[: len(final.outputs[0].token_ids)]
    _assert_idle(llm)
