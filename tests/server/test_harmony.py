"""GPT-OSS's harmony replies: reasoning, content and tool calls read out of its channels, whole and
streamed, and through the server (--reasoning-parser openai_gptoss, --tool-call-parser openai)."""

from __future__ import annotations

import json
import pathlib

import pytest

from transformers import AutoTokenizer

from pagoda.engine.entrypoints.harmony import HarmonyParser
from pagoda.engine.entrypoints.protocol import ChatCompletionRequest
from pagoda.engine.entrypoints.protocol_responses import ResponsesRequest
from pagoda.engine.entrypoints.reply import ReplyPiece
from pagoda.engine.entrypoints.tool_parsers import detect_tool_parser
from tests.server.conftest import MODEL_NAME, serve_in_thread
from tests.server.test_tool_calls import client_of, create_reply, tool_server_args

ANALYSIS = "<|channel|>analysis<|message|>The user wants the time; call the clock.<|end|>"
CALL = '<|start|>assistant<|channel|>commentary to=functions.get_time <|constrain|>json<|message|>{"zone": "UTC"}<|call|>'


def _streamed(text: str, **options: object) -> ReplyPiece:
    """The pieces of `text` fed a character at a time, joined (call pieces kept apart)."""
    parser, joined = HarmonyParser(**options), ReplyPiece()
    for i, ch in enumerate(text):
        piece = parser.feed(ch, final=i == len(text) - 1)
        joined.reasoning += piece.reasoning
        joined.content += piece.content
        joined.calls += piece.calls
    return joined


def _calls(piece: ReplyPiece) -> list[tuple[str, str]]:
    calls: dict[int, list[str]] = {}
    for p in piece.calls:
        if p.name is not None:
            calls[p.index] = [p.name, ""]
        calls[p.index][1] += p.arguments
    return [tuple(calls[i]) for i in sorted(calls)]


@pytest.mark.parametrize(("text", "reasoning", "content", "calls"), [
    (ANALYSIS + CALL, "The user wants the time; call the clock.", "", [("get_time", '{"zone": "UTC"}')]),
    # The recipient in the role part; a preamble to the user (commentary without a recipient) is content.
    (ANALYSIS + "<|start|>assistant<|channel|>commentary<|message|>Checking.<|end|>"
     '<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>',
     "The user wants the time; call the clock.", "Checking.", [("get_weather", '{"city": "Paris"}')]),
    (ANALYSIS + "<|start|>assistant<|channel|>final<|message|>It is noon <in UTC>.<|return|>",
     "The user wants the time; call the clock.", "It is noon <in UTC>.", []),
    # Cut by max_tokens inside the reasoning, and inside the next header.
    ("<|channel|>analysis<|message|>Half a thou", "Half a thou", "", []),
    (ANALYSIS + "<|start|>assistant<|chan", "The user wants the time; call the clock.", "", []),
    # A model that ignores the format: everything is content.
    ("Just text <|end|> and more", "", "Just text <|end|> and more", []),
])
def test_reply_read_whole_and_streamed(text: str, reasoning: str, content: str, calls: list) -> None:
    for piece in (HarmonyParser().parse(text), _streamed(text)):
        assert (piece.reasoning, piece.content, _calls(piece)) == (reasoning, content, calls)


def test_parallel_calls_off_keeps_the_first() -> None:
    text = ANALYSIS + CALL + CALL.replace("UTC", "CET")
    assert _calls(_streamed(text, max_calls=1)) == [("get_time", '{"zone": "UTC"}')]
    assert len(_calls(HarmonyParser().parse(text))) == 2


def test_harmony_templates_select_the_reader() -> None:
    assert detect_tool_parser("{{ '<|start|>assistant<|channel|>final<|message|>' }}") == "openai"


# The fixture's random weights never write harmony: the reply is forced by a constraint (as text).
HARMONY_REPLY = (r"<\|channel\|>analysis<\|message\|>Need the clock\.<\|end\|><\|start\|>assistant<\|channel\|>"
                 r'commentary to=functions\.get_time <\|constrain\|>json<\|message\|>\{"zone": "UTC"\}')


def test_server_reads_harmony(model_dir: pathlib.Path) -> None:
    args = tool_server_args(model_dir, "--tool-call-parser", "openai", "--reasoning-parser", "openai_gptoss")
    with serve_in_thread(args) as running:
        client = client_of(running)
        for stream in (False, True):
            reply = create_reply(client, stream, max_tokens=256, extra_body={"structured_outputs": {"regex": HARMONY_REPLY}})
            assert (reply.content, reply.reasoning, reply.finish) == (None, "Need the clock.", "tool_calls")
            [(call_id, name, arguments)] = reply.calls
            assert (name, json.loads(arguments)) == ("get_time", {"zone": "UTC"}) and call_id.startswith("call_")
        running.wait_idle()


def test_gpt_oss_served_as_harmony(tiny_model) -> None:
    """The GPT-OSS fixture (harmony's template, special tokens and stop tokens): the server reads replies
    as harmony without being told, and `reasoning_effort` reaches the template's system message."""
    path = tiny_model("gpt_oss")
    with serve_in_thread(tool_server_args(path)) as running:
        client = client_of(running)
        reply = create_reply(client, False, max_tokens=256, reasoning_effort="high",
                             extra_body={"structured_outputs": {"regex": HARMONY_REPLY}})
        assert (reply.content, reply.reasoning, reply.finish) == (None, "Need the clock.", "tool_calls")
        response = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}],
                                                  max_tokens=1, reasoning_effort="low",
                                                  extra_body={"return_token_ids": True})
        prompt = AutoTokenizer.from_pretrained(path).decode(response.model_extra["prompt_token_ids"])
        assert "Reasoning: low" in prompt and prompt.endswith("<|start|>assistant")
        running.wait_idle()


def test_responses_reasoning_effort_reaches_the_template() -> None:
    chat = ResponsesRequest.model_validate({"input": "Hi", "reasoning": {"effort": "high"}}).to_chat()
    assert chat.template_kwargs()["reasoning_effort"] == "high"
    chat = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "Hi"}], "reasoning_effort": "low",
                                                 "chat_template_kwargs": {"reasoning_effort": "medium"}})
    assert chat.template_kwargs()["reasoning_effort"] == "medium", "the template's own kwargs win"
