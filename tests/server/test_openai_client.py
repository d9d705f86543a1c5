"""The official openai client against the server: what every OpenAI user will do first."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

from pagoda.engine.beam_search import BeamSearchParams
from pagoda.engine.llm import LLM
from pagoda.engine.tokenizer import apply_chat_template, bad_word_sequences, load_tokenizer
from tests.server.conftest import API_KEY, MAX_MODEL_LEN, MODEL_NAME, RunningServer

openai = pytest.importorskip("openai")

PROMPT = "Hello, my name is"
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Tell me a story."}]
# Random weights rarely sample EOS, but ignore_eos makes lengths exact.
EXACT = {"ignore_eos": True}


@pytest.fixture
def client(idle_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=idle_server.url + "/v1", api_key=API_KEY, max_retries=0)


def _prompt_len(server: RunningServer, text: str) -> int:
    return server.request("POST", "/tokenize", {"prompt": text}).json()["count"]


def test_models(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL_NAME]


def test_completion_usage_is_exact(client: openai.OpenAI, idle_server: RunningServer) -> None:
    out = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=7, temperature=0, extra_body=EXACT)
    assert out.object == "text_completion" and len(out.choices) == 1
    assert out.choices[0].finish_reason == "length"
    assert out.usage.prompt_tokens == _prompt_len(idle_server, PROMPT)
    assert out.usage.completion_tokens == 7
    assert out.usage.total_tokens == out.usage.prompt_tokens + 7


def test_completion_stream_equals_non_stream(client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL_NAME, prompt=PROMPT, max_tokens=24, temperature=0, extra_body=EXACT)
    full = client.completions.create(**kwargs)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage == full.usage


def test_chat_stream_equals_non_stream(client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL_NAME, messages=MESSAGES, max_tokens=20, temperature=0, extra_body=EXACT)
    full = client.chat.completions.create(**kwargs)
    assert full.choices[0].message.role == "assistant"
    assert full.usage.completion_tokens == 20
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    counts = lambda u: (u.prompt_tokens, u.completion_tokens, u.total_tokens)  # noqa: E731
    assert counts(chunks[-1].usage) == counts(full.usage)
    # The second request found the first one's prompt blocks in the prefix cache.
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens >= full.usage.prompt_tokens_details.cached_tokens


def test_max_completion_tokens_and_default_length(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_completion_tokens=3,
                                         extra_body=EXACT)
    assert out.usage.completion_tokens == 3
    # Without any limit, a chat completion may fill the rest of the context.
    out = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, extra_body=EXACT)
    assert out.usage.total_tokens == 256 and out.choices[0].finish_reason == "length"


def test_n_with_seed_is_reproducible(client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL_NAME, prompt=PROMPT, max_tokens=12, n=3, temperature=1.0, seed=1234, extra_body=EXACT)
    first = client.completions.create(**kwargs)
    second = client.completions.create(**kwargs)
    texts = [c.text for c in sorted(first.choices, key=lambda c: c.index)]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.text for c in sorted(second.choices, key=lambda c: c.index)]
    assert len(set(texts)) > 1  # each choice has its own stream of random numbers
    assert first.usage.completion_tokens == 36
    streamed = {}
    for chunk in client.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + choice.text
    assert [streamed[i] for i in range(3)] == texts
    other = client.completions.create(**{**kwargs, "seed": 4321})
    assert [c.text for c in sorted(other.choices, key=lambda c: c.index)] != texts


def test_stop_strings(client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL_NAME, prompt=PROMPT, max_tokens=40, temperature=0, extra_body=EXACT)
    text = client.completions.create(**kwargs).choices[0].text
    stop = text[10:13]
    assert stop.strip() and stop in text
    out = client.completions.create(stop=[stop, "never-there"], **kwargs)
    choice = out.choices[0]
    assert choice.text == text[: text.index(stop)]
    assert choice.finish_reason == "stop" and choice.model_extra["stop_reason"] == stop
    streamed = "".join(c.choices[0].text for c in client.completions.create(stop=stop, stream=True, **kwargs)
                       if c.choices)
    assert streamed == choice.text


def test_completion_logprobs(client: openai.OpenAI) -> None:
    out = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3,
                                    extra_body=EXACT)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert value <= 0.0
        # Distinct byte tokens can decode to the same string (U+FFFD), which shares a key.
        assert 1 <= len(top) <= 4 and top[token] == value
        assert value == pytest.approx(max(top.values()))  # greedy picks the most likely token
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)


def test_chat_logprobs_streamed_and_not(client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL_NAME, messages=MESSAGES, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2,
                  extra_body=EXACT)
    full = client.chat.completions.create(**kwargs).choices[0].logprobs.content
    assert len(full) == 5
    for entry in full:
        assert [t.token for t in entry.top_logprobs][:1] == [entry.token]
        assert len(entry.top_logprobs) == 2 and entry.bytes == list(entry.token.encode())
    streamed = [e for c in client.chat.completions.create(stream=True, **kwargs) if c.choices and c.choices[0].logprobs
                for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in full]


def test_prompt_shapes_and_batch_usage(client: openai.OpenAI, idle_server: RunningServer) -> None:
    ids = idle_server.request("POST", "/tokenize", {"prompt": PROMPT}).json()["tokens"]
    by_text = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=5, temperature=0)
    by_ids = client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=5, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    batch = client.completions.create(model=MODEL_NAME, prompt=[PROMPT, "Once upon a time"], max_tokens=4, n=2,
                                      temperature=0, extra_body=EXACT)
    assert sorted(c.index for c in batch.choices) == [0, 1, 2, 3]
    assert batch.usage.prompt_tokens == len(ids) + _prompt_len(idle_server, "Once upon a time")
    assert batch.usage.completion_tokens == 16
    batch_ids = client.completions.create(model=MODEL_NAME, prompt=[ids, ids[:2]], max_tokens=2, temperature=0)
    assert len(batch_ids.choices) == 2


def idle_server_decode(client: openai.OpenAI, tokens: list[int]) -> str:
    return client.post("/../detokenize", body={"tokens": tokens}, cast_to=object)["prompt"]


def test_sampling_extras_are_honored(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=8, temperature=0.8, top_p=0.9, presence_penalty=0.5,
        frequency_penalty=0.5, seed=7, user="someone",
        extra_body={"top_k": 5, "min_p": 0.05, "repetition_penalty": 1.2, "min_tokens": 8, "ignore_eos": False},
    )
    assert out.usage.completion_tokens == 8
    # A maximal bias forces one token everywhere, even when sampling.
    forced = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=4, logit_bias={"44": 100},
                                       logprobs=0, extra_body=EXACT)
    token = idle_server_decode(client, [44])
    assert forced.choices[0].logprobs.tokens == [token] * 4


def test_tokenize_detokenize_version_probes(idle_server: RunningServer) -> None:
    tokens = idle_server.request("POST", "/tokenize", {"prompt": PROMPT}).json()
    assert tokens["count"] == len(tokens["tokens"]) and tokens["max_model_len"] == 256
    text = idle_server.request("POST", "/detokenize", {"tokens": tokens["tokens"]}).json()["prompt"]
    assert PROMPT in text
    chat = idle_server.request("POST", "/tokenize", {"messages": MESSAGES}).json()
    assert chat["count"] > tokens["count"]
    assert idle_server.request("GET", "/version", auth=False).json()["version"]
    assert idle_server.request("GET", "/health", auth=False).status == 200
    assert idle_server.request("GET", "/ready", auth=False).status == 200


SCHEMA = {"type": "object", "additionalProperties": False, "required": ["answer", "confidence"],
          "properties": {"answer": {"enum": ["yes", "no"]}, "confidence": {"type": "integer", "minimum": 0,
                                                                           "maximum": 100}}}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_chat_response_format_json_schema(client: openai.OpenAI, stream: bool) -> None:
    """OpenAI's structured outputs: the reply parses and follows the schema,
    whatever the random-weight model would have said."""
    response_format = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA, "strict": True}}
    kwargs = dict(model=MODEL_NAME, messages=MESSAGES, max_tokens=64, temperature=1.0, seed=5,
                  response_format=response_format)
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kwargs)
                       if c.choices)
    else:
        choice = client.chat.completions.create(**kwargs).choices[0]
        assert choice.finish_reason == "stop"
        text = choice.message.content
    value = json.loads(text)
    assert value["answer"] in {"yes", "no"} and 0 <= value["confidence"] <= 100 and set(value) == set(SCHEMA["required"])


def test_completion_structured_outputs_choice_and_regex(client: openai.OpenAI) -> None:
    """vLLM's structured_outputs, on the completions endpoint too."""
    choices = ["positive", "negative"]
    out = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=16, n=4, temperature=1.0, seed=2,
                                    extra_body={"structured_outputs": {"choice": choices}})
    assert {c.text for c in out.choices} <= set(choices) and all(c.finish_reason == "stop" for c in out.choices)
    out = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=16, temperature=0,
                                    extra_body={"structured_outputs": {"regex": r"\d{4}-\d{2}-\d{2}"}})
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", out.choices[0].text)


def test_cached_tokens_and_cache_salt(client: openai.OpenAI) -> None:
    """usage reports the prompt tokens served from the prefix cache; a cache_salt keeps a
    request from sharing KV blocks with requests of another salt (or none)."""
    prompt = [1] + [(7 * i + 11) % 380 + 10 for i in range(70)]  # a prompt no other test sends

    def cached(**extra: str) -> int:
        out = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=1,
                                        extra_body=extra)
        return out.usage.prompt_tokens_details.cached_tokens

    assert cached() == 0
    assert cached() >= 64  # every full block but the last token's
    assert cached(cache_salt="tenant-a") == 0
    assert cached(cache_salt="tenant-a") >= 64
    assert cached(cache_salt="tenant-b") == 0


def test_priority_needs_the_policy(idle_server: RunningServer) -> None:
    body = {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 2, "priority": 1}
    result = idle_server.request("POST", "/v1/completions", body)
    assert result.status == 400 and result.json()["error"]["param"] == "priority"
    assert idle_server.request("POST", "/v1/completions", {**body, "priority": 0}).status == 200


def test_truncate_prompt_tokens(client: openai.OpenAI, idle_server: RunningServer) -> None:
    """The prompt's last N tokens are kept: the completion is the one of that tail, and usage counts it."""
    ids = [1] + [(5 * i + 3) % 380 + 10 for i in range(60)]
    kwargs = dict(model=MODEL_NAME, max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
    tail = client.completions.create(prompt=ids[-20:], **kwargs)
    cut = client.completions.create(prompt=ids, **{**kwargs, "extra_body": {"ignore_eos": True,
                                                                            "truncate_prompt_tokens": 20}})
    assert cut.choices[0].text == tail.choices[0].text and cut.usage.prompt_tokens == 20
    # -1: as many as fit beside the completion, so an over-long prompt still gets its answer.
    long = client.completions.create(prompt=[5] * (MAX_MODEL_LEN + 50), max_tokens=4, model=MODEL_NAME,
                                     extra_body={"truncate_prompt_tokens": -1, "ignore_eos": True})
    assert (long.usage.prompt_tokens, long.usage.completion_tokens) == (MAX_MODEL_LEN - 4, 4)
    bad = idle_server.request("POST", "/v1/completions", {"model": MODEL_NAME, "prompt": "x",
                                                         "truncate_prompt_tokens": 0})
    assert bad.status == 400 and bad.json()["error"]["param"] == "truncate_prompt_tokens"


def test_allowed_token_ids_and_bad_words(client: openai.OpenAI, idle_server: RunningServer) -> None:
    """vLLM's extra sampling fields; tokens compared by their text, as the API returns them."""
    tokenizer = idle_server.state.engine.engine.tokenizer
    allowed = [5, 11, 42]
    out = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=0,
                                    extra_body={**EXACT, "allowed_token_ids": allowed})
    assert set(out.choices[0].logprobs.tokens) <= {tokenizer.decode([t]) for t in allowed}
    free = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=12, temperature=0, logprobs=0,
                                     extra_body=EXACT).choices[0]
    # A generated token that is a word on its own, as the ban tokenizes it.
    piece = next(p for p in free.logprobs.tokens if p.strip() and any(
        len(seq) == 1 and tokenizer.decode(seq) == p for seq in bad_word_sequences(tokenizer, [p.strip()])))
    banned = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=12, temperature=0, logprobs=0,
                                       extra_body={**EXACT, "bad_words": [piece.strip()]}).choices[0]
    assert piece not in banned.logprobs.tokens and banned.text != free.text
    with pytest.raises(openai.BadRequestError, match="allowed_token_ids"):
        client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=2,
                                  extra_body={"allowed_token_ids": [10**7]})


def test_beam_search_returns_the_offline_apis_beams(client: openai.OpenAI, model_dir: pathlib.Path) -> None:
    """vLLM's use_beam_search: the n beams of each prompt as its n choices, best first, as
    LLM.beam_search finds them on the same weights."""
    prompts = [PROMPT, "Once upon a time"]
    out = client.completions.create(model=MODEL_NAME, prompt=prompts, n=3, max_tokens=5,
                                    extra_body={"use_beam_search": True, "ignore_eos": True})
    assert [c.index for c in out.choices] == list(range(6)) and out.usage.completion_tokens == 6 * 5
    offline = LLM(str(model_dir), max_model_len=MAX_MODEL_LEN, kv_cache_memory_bytes=16 << 20)
    expected = offline.beam_search(prompts, BeamSearchParams(beam_width=3, max_tokens=5, ignore_eos=True))
    assert [c.text for c in out.choices] == [beam.text for result in expected for beam in result.sequences]
    with pytest.raises(openai.BadRequestError, match="stream"):
        client.completions.create(model=MODEL_NAME, prompt=PROMPT, n=2, stream=True,
                                  extra_body={"use_beam_search": True})
    with pytest.raises(openai.BadRequestError) as wide:
        client.completions.create(model=MODEL_NAME, prompt=PROMPT, n=11, extra_body={"use_beam_search": True})
    assert wide.value.body["param"] == "n"


def test_beam_search_on_chat(client: openai.OpenAI, model_dir: pathlib.Path) -> None:
    reply = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, n=2, max_tokens=4,
                                           extra_body={"use_beam_search": True, "ignore_eos": True})
    assert [c.index for c in reply.choices] == [0, 1] and reply.usage.completion_tokens == 8
    offline = LLM(str(model_dir), max_model_len=MAX_MODEL_LEN, kv_cache_memory_bytes=16 << 20)
    prompt = apply_chat_template(offline.tokenizer, MESSAGES)
    [expected] = offline.beam_search([prompt], BeamSearchParams(beam_width=2, max_tokens=4, ignore_eos=True))
    assert [c.message.content for c in reply.choices] == [beam.text for beam in expected.sequences]
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, n=2, logprobs=True,
                                       extra_body={"use_beam_search": True})


def test_beam_search_refuses_an_extreme_length_penalty(client: openai.OpenAI) -> None:
    """Found by the fuzzer: a length_penalty of -2e16 made the ranking divide by zero (a 500)."""
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, n=2, max_tokens=2,
                                       extra_body={"use_beam_search": True, "length_penalty": -2e16})
    assert refused.value.body["param"] == "length_penalty"


def test_beam_search_fits_the_context(client: openai.OpenAI) -> None:
    """Found by the fuzzer: a chat without max_tokens grew its beams past the context length (a 500);
    they now stop at it, and a max_tokens that cannot fit is refused as for any request."""
    out = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, n=2,
                                         extra_body={"use_beam_search": True, "ignore_eos": True})
    assert out.usage.prompt_tokens + out.usage.completion_tokens // 2 == MAX_MODEL_LEN
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model=MODEL_NAME, prompt=[5] * (MAX_MODEL_LEN - 4), n=2, max_tokens=8,
                                  extra_body={"use_beam_search": True})
    assert refused.value.body["code"] == "context_length_exceeded"


def test_return_token_ids(client: openai.OpenAI, model_dir: pathlib.Path) -> None:
    """vLLM's return_token_ids: the prompt's ids (the rendered chat for chat) and each choice's, whole
    or, streamed, the prompt's in a choice's first chunk and each chunk's new ones; absent otherwise."""
    tok = load_tokenizer(model_dir)
    args = dict(model=MODEL_NAME, max_tokens=6, temperature=0, extra_body={"return_token_ids": True, "ignore_eos": True})
    whole = client.completions.create(prompt="Hello there", n=2, **{**args, "temperature": 1.0, "seed": 3})
    for choice in whole.choices:
        assert choice.prompt_token_ids == tok.encode("Hello there")
        assert len(choice.token_ids) == 6 and tok.decode(choice.token_ids) == choice.text
    streamed: dict[int, list[int]] = {}
    prompts: dict[int, list[int]] = {}
    for chunk in client.completions.create(prompt="Hello there", stream=True, n=2,
                                           **{**args, "temperature": 1.0, "seed": 3}):
        for choice in chunk.choices:
            streamed.setdefault(choice.index, []).extend(choice.token_ids or [])
            if choice.prompt_token_ids is not None:
                assert choice.index not in prompts, "the prompt's ids come once per choice"
                prompts[choice.index] = choice.prompt_token_ids
    assert streamed == {c.index: c.token_ids for c in whole.choices} and set(prompts) == {0, 1}

    messages = [{"role": "user", "content": "Hi!"}]
    rendered = apply_chat_template(tok, messages)
    chat = client.chat.completions.create(messages=messages, **args)
    assert chat.prompt_token_ids == rendered and len(chat.choices[0].token_ids) == 6
    ids, prompt = [], None
    for chunk in client.chat.completions.create(messages=messages, stream=True, **args):
        if getattr(chunk, "prompt_token_ids", None) is not None:
            prompt = chunk.prompt_token_ids
        for choice in chunk.choices:
            ids.extend(getattr(choice, "token_ids", None) or [])
    assert prompt == rendered and ids == chat.choices[0].token_ids
    plain = client.chat.completions.create(messages=messages, model=MODEL_NAME, max_tokens=2)
    assert getattr(plain, "prompt_token_ids", None) is None and getattr(plain.choices[0], "token_ids", None) is None
