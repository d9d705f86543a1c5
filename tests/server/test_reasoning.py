"""Reasoning models: with --reasoning-parser the <think> text is returned as `reasoning`,
apart from the content and the tool calls, alike whole and streamed."""

from __future__ import annotations

import json
import pathlib
import random
import shutil
from collections.abc import Iterator

import pytest

from pagoda.engine.entrypoints.reply import ReplyParser, ThinkParser, prompt_opens_reasoning
from pagoda.engine.entrypoints.tool_parsers import HermesParser
from tests.server.conftest import RunningServer, serve_in_thread
from tests.server.test_tool_calls import HERMES_REPLY, client_of, create_reply, tool_server_args

openai = pytest.importorskip("openai")

THINK = [
    # (reply opens inside the thinking, text, reasoning, content)
    (False, "<think>\nplan\n</think>\n\nAnswer.", "\nplan\n", "Answer."),
    (False, "An answer without thinking.", "", "An answer without thinking."),
    (False, "  <think>a</think>b", "a", "b"),
    (False, "a <think>b</think>", "", "a <think>b</think>"),  # thinking comes first or not at all
    (False, "<thi", "", "<thi"),
    (False, "<think>cut off</thin", "cut off</thin", ""),  # max_tokens inside the thinking
    (False, "<think>\n\n</think>\n\n", "\n\n", ""),
    (False, "", "", ""),
    (True, "plan</think>\n\nAnswer", "plan", "Answer"),  # the template opened <think> in the prompt
    (True, "still thinking", "still thinking", ""),
]


def read(parser: ReplyParser, text: str, seed: int | None) -> tuple[str, str, list]:
    if seed is None:
        piece = parser.parse(text)
        return piece.reasoning, piece.content, piece.calls
    rng, reasoning, content, calls, at = random.Random(seed), "", "", [], 0
    while True:
        size = rng.choice([0, 1, 2, 5])
        piece = parser.feed(text[at:at + size], final=at + size >= len(text))
        reasoning, content, calls, at = reasoning + piece.reasoning, content + piece.content, calls + piece.calls, at + size
        if at >= len(text):
            return reasoning, content, calls


@pytest.mark.parametrize(("in_reasoning", "text", "reasoning", "content"), THINK, ids=range(len(THINK)))
def test_think_parser(in_reasoning: bool, text: str, reasoning: str, content: str) -> None:
    for seed in (None, *range(20)):
        assert read(ReplyParser(ThinkParser(in_reasoning), None), text, seed)[:2] == (reasoning, content), seed


def test_thinking_then_tool_calls() -> None:
    text = '<think>I need the weather.</think>\n\n<tool_call>{"name": "w", "arguments": {"c": "Oslo"}}</tool_call>'
    for seed in (None, *range(20)):
        reasoning, content, calls = read(ReplyParser(ThinkParser(False), HermesParser()), text, seed)
        assert (reasoning, content) == ("I need the weather.", "")
        assert [(c.name, json.loads(c.arguments)) for c in calls] == [("w", {"c": "Oslo"})]


def test_prompt_opens_reasoning() -> None:
    assert prompt_opens_reasoning("<|im_start|>assistant\n<think>\n")
    assert not prompt_opens_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # enable_thinking=False
    assert not prompt_opens_reasoning("<|im_start|>assistant\n")


THOUGHT = r"<think>\nThe user asks about Paris\.\n</think>\n\n"


@pytest.fixture(scope="module")
def reasoning_server(model_dir: pathlib.Path) -> Iterator[RunningServer]:
    with serve_in_thread(tool_server_args(model_dir, "--reasoning-parser", "qwen3")) as running:
        yield running


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_reasoning_apart_from_content(reasoning_server: RunningServer, stream: bool) -> None:
    client = client_of(reasoning_server)
    reply = create_reply(client, stream, tools=None, max_tokens=256,
                         extra_body={"structured_outputs": {"regex": THOUGHT + r"It is sunny\."}})
    assert reply == ("It is sunny.", [], "stop", "\nThe user asks about Paris.\n")
    # Thinking, then a call: the tool-call parser reads what follows the thinking.
    reply = create_reply(client, stream, max_tokens=384,
                         extra_body={"structured_outputs": {"regex": THOUGHT + HERMES_REPLY}})
    assert (reply.reasoning, reply.content, reply.finish) == ("\nThe user asks about Paris.\n", "Checking.",
                                                              "tool_calls")
    assert [(name, json.loads(args)) for _, name, args in reply.calls] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"})]
    reasoning_server.wait_idle()


def test_without_a_reasoning_parser_thinking_is_content(model_dir: pathlib.Path) -> None:
    with serve_in_thread(tool_server_args(model_dir)) as plain:
        reply = create_reply(client_of(plain), False, tools=None, max_tokens=256,
                             extra_body={"structured_outputs": {"regex": THOUGHT + r"It is sunny\."}})
    assert reply == ("<think>\nThe user asks about Paris.\n</think>\n\nIt is sunny.", [], "stop", None)


# ---- structured outputs wait for the thinking ----------------------------------------------------

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["answer"],
          "properties": {"answer": {"enum": ["yes", "no"]}}}
JSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA}}


@pytest.fixture(scope="module")
def thinking_model(model_dir: pathlib.Path, tmp_path_factory) -> tuple[pathlib.Path, int, int]:
    """The fixture model with <think> and </think> as tokens and Qwen3's thinking switches in its
    template: enable_thinking=false closes an empty block in the prompt, open_thinking opens one."""
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("thinking") / "model"
    shutil.copytree(model_dir, path)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    tokenizer.add_tokens(["<think>", "</think>"])
    prompt = "{{- '<|im_start|>assistant\\n' }}"
    assert prompt in tokenizer.chat_template
    tokenizer.chat_template = tokenizer.chat_template.replace(prompt, prompt + (
        "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
        "{%- elif open_thinking is defined and open_thinking %}{{- '<think>\\n' }}{%- endif %}"))
    tokenizer.save_pretrained(str(path))
    vocab = tokenizer.get_vocab()
    return path, vocab["<think>"], vocab["</think>"]


@pytest.fixture(scope="module")
def thinking_server(thinking_model) -> Iterator[RunningServer]:
    with serve_in_thread(tool_server_args(thinking_model[0], "--reasoning-parser", "qwen3")) as running:
        yield running


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("case", ["prompt-opens", "may-open", "disabled"])
def test_constraint_starts_after_thinking(thinking_server: RunningServer, thinking_model, case: str,
                                          stream: bool) -> None:
    """The answer follows the schema while the thinking before it is free: the model reasons, then
    answers. Biases steer the random weights: toward </think> (a few tokens in) and, where the
    reply may open with <think>, toward that too; the constraint masks both once it applies."""
    _, start, end = thinking_model
    kwargs = {"prompt-opens": {"open_thinking": True}, "may-open": {}, "disabled": {"enable_thinking": False}}[case]
    bias = {str(end): 6.0} if case == "prompt-opens" else {str(start): 50.0, str(end): 60.0}
    reply = create_reply(client_of(thinking_server), stream, tools=None, max_tokens=200, temperature=1.0, seed=4,
                         logit_bias=bias, response_format=JSON_FORMAT,
                         extra_body={"chat_template_kwargs": kwargs})
    assert reply.finish == "stop" and json.loads(reply.content)["answer"] in {"yes", "no"}
    if case == "prompt-opens":
        assert reply.reasoning and "</think>" not in reply.reasoning  # it thought, freely, before answering
    else:
        assert reply.reasoning is None  # an empty block (may-open) or none at all (disabled)
    thinking_server.wait_idle()
