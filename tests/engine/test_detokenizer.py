"""Incremental detokenization equals decoding the whole output, whatever the token boundaries."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pagoda.engine.detokenizer import IncrementalDetokenizer
from pagoda.engine.fixtures import SPECIAL_TOKENS, TOKENIZER_VOCAB_SIZE
from pagoda.engine.tokenizer import load_tokenizer

TEXTS = ["Ça coûte trois euros à la fenêtre.", "東京は日本の首都です。🚀 launch, 👍🏽 ok", "def fib(n):\n    return n"]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tokenizer(request, tiny_model):
    return load_tokenizer(tiny_model(request.param))


def _stream(tokenizer, prompt: list[int], ids: list[int], chunk: int = 1, **kwargs) -> tuple[str, str]:
    detok = IncrementalDetokenizer(tokenizer, prompt, **kwargs)
    streamed = ""
    for i in range(0, len(ids), chunk):
        detok.update(ids[i : i + chunk])
        streamed += detok.get_delta(False)
    detok.finish()
    streamed += detok.get_delta(True)
    return detok.output_text, streamed


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("chunk", [1, 3])
def test_real_text_round_trips(tokenizer, text: str, chunk: int) -> None:
    prompt = tokenizer.encode("Hello")
    ids = tokenizer.encode(text, add_special_tokens=False)
    out, streamed = _stream(tokenizer, prompt, ids, chunk)
    assert out == streamed == text


@settings(max_examples=60, deadline=None)
@given(ids=st.lists(st.integers(len(SPECIAL_TOKENS), TOKENIZER_VOCAB_SIZE - 1), min_size=1, max_size=40))
def test_random_tokens_match_a_full_decode(tokenizer, ids: list[int]) -> None:
    """Random byte tokens make invalid UTF-8 too: text must still appear, as a full decode shows it."""
    out, streamed = _stream(tokenizer, tokenizer.encode("Hi"), ids)
    assert out == streamed == tokenizer.decode(ids, skip_special_tokens=True)


def test_stop_string_truncates_and_is_held_back(tokenizer) -> None:
    ids = tokenizer.encode("The quick brown fox jumps", add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, [], stop=["brown"])
    shown, stop = "", None
    for token in ids:
        stop = detok.update([token]) or stop
        shown += detok.get_delta(False)
        assert "bro" not in shown
    assert stop == "brown" and detok.output_text == "The quick "
    assert shown + detok.get_delta(True) == "The quick "
