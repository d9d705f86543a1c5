"""`echo` and `prompt_logprobs` on /v1/completions (and `prompt_logprobs` on chat): scoring a text's
likelihood, as evaluation harnesses (lm-evaluation-harness' loglikelihood: echo, logprobs=1,
max_tokens=1) do against vLLM."""

from __future__ import annotations

import pathlib

import pytest

from tests.engine.hf_reference import hf_logprobs
from tests.server.conftest import API_KEY, MODEL_NAME, RunningServer

openai = pytest.importorskip("openai")

PROMPT = "The quick brown fox jumps over the lazy dog"
GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}


@pytest.fixture
def client(idle_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=idle_server.url + "/v1", api_key=API_KEY, max_retries=0)


def _prompt_ids(server: RunningServer) -> list[int]:
    return server.request("POST", "/tokenize", {"prompt": PROMPT}).json()["tokens"]


def test_echo_puts_the_prompt_in_front(client: openai.OpenAI) -> None:
    plain = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=5, **GREEDY)
    echoed = client.completions.create(model=MODEL_NAME, prompt=[PROMPT, PROMPT], max_tokens=5, echo=True, n=2,
                                       **GREEDY)
    assert [c.text for c in echoed.choices] == [PROMPT + plain.choices[0].text] * 4
    assert echoed.usage.completion_tokens == 4 * 5


def test_echoed_logprobs_are_the_models_loglikelihood(client: openai.OpenAI, idle_server: RunningServer,
                                                      model_dir: pathlib.Path) -> None:
    ids = _prompt_ids(idle_server)
    out = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=1, echo=True, logprobs=1, **GREEDY)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(ids) + 1
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None, "nothing precedes the first token"
    reference = hf_logprobs(model_dir, ids)
    for pos in range(1, len(ids)):
        assert lp.token_logprobs[pos] == pytest.approx(float(reference[pos - 1, ids[pos]]), abs=1e-4)
        assert max(lp.top_logprobs[pos].values()) == pytest.approx(float(reference[pos - 1].max()), abs=1e-4)
    assert lp.text_offset == sorted(lp.text_offset)
    assert out.choices[0].text.startswith(PROMPT)


def test_streamed_echo_equals_the_whole(client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL_NAME, prompt=PROMPT, max_tokens=6, echo=True, logprobs=2, **GREEDY)
    whole = client.completions.create(**kwargs).choices[0]
    chunks = [c.choices[0] for c in client.completions.create(stream=True, **kwargs) if c.choices]
    assert "".join(c.text for c in chunks) == whole.text
    streamed = [(t, v, o) for c in chunks if c.logprobs
                for t, v, o in zip(c.logprobs.tokens, c.logprobs.token_logprobs, c.logprobs.text_offset)]
    assert streamed == list(zip(whole.logprobs.tokens, whole.logprobs.token_logprobs, whole.logprobs.text_offset))


def test_vllm_prompt_logprobs(client: openai.OpenAI, idle_server: RunningServer, model_dir: pathlib.Path) -> None:
    ids = _prompt_ids(idle_server)
    out = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=2, temperature=0,
                                    extra_body={"ignore_eos": True, "prompt_logprobs": 2})
    entries = out.choices[0].prompt_logprobs
    assert len(entries) == len(ids) and entries[0] is None
    reference = hf_logprobs(model_dir, ids)
    for pos, entry in enumerate(entries[1:], start=1):
        assert str(ids[pos]) in entry and 2 <= len(entry) <= 3
        assert entry[str(ids[pos])]["logprob"] == pytest.approx(float(reference[pos - 1, ids[pos]]), abs=1e-4)
        ranked = sorted((e for e in entry.values() if e["rank"] is not None), key=lambda e: e["rank"])
        assert [e["rank"] for e in ranked][:2] == [1, 2] and ranked[0]["decoded_token"] is not None
    assert not client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=1).choices[0].prompt_logprobs


def test_chat_prompt_logprobs(client: openai.OpenAI, idle_server: RunningServer, model_dir: pathlib.Path) -> None:
    """vLLM's prompt_logprobs on chat: the rendered conversation's tokens, scored."""
    messages = [{"role": "user", "content": PROMPT}]
    ids = idle_server.request("POST", "/tokenize", {"messages": messages}).json()["tokens"]
    out = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=1, temperature=0,
                                         extra_body={"prompt_logprobs": 1})
    entries = out.prompt_logprobs
    assert len(entries) == len(ids) and entries[0] is None
    reference = hf_logprobs(model_dir, ids)
    for pos in range(1, len(ids)):
        assert entries[pos][str(ids[pos])]["logprob"] == pytest.approx(float(reference[pos - 1, ids[pos]]), abs=1e-4)
    assert client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=1).prompt_logprobs is None
