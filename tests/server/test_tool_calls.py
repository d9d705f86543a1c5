"""Tool calling through the official openai client: named, required and auto tool choice,
whole and streamed, multi-turn conversations with tool results, and the errors."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest

from tests.server.conftest import MODEL_NAME, RunningServer, serve_in_thread
from tests.server.test_errors import assert_error, assert_still_serving

openai = pytest.importorskip("openai")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                   "properties": {"city": {"type": "string", "maxLength": 12},
                                  "unit": {"enum": ["celsius", "fahrenheit"]}}}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "additionalProperties": False, "required": ["zone"],
                                       "properties": {"zone": {"enum": ["UTC", "CET"]}}}}}
TOOLS = [WEATHER, CLOCK]
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
# A reply in the template's <tool_call> format, forced: random weights would not write one.
HERMES_REPLY = r'Checking\.\n<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "Paris", "unit": "celsius"\}\}\n</tool_call>'
LLAMA_REPLY = r'\{"name": "get_time", "parameters": \{"zone": "UTC"\}\}'
# The tools' descriptions make a long system turn for the fixture's 400-token vocabulary.
CONTEXT = "2048"


def tool_server_args(model_dir: pathlib.Path, *extra: str) -> list[str]:
    return [str(model_dir), "--served-model-name", MODEL_NAME, "--max-model-len", CONTEXT, *extra]


@pytest.fixture(scope="module")
def tool_server(model_dir: pathlib.Path) -> Iterator[RunningServer]:
    """The default --tool-call-parser: the format the chat template teaches."""
    with serve_in_thread(tool_server_args(model_dir)) as running:
        yield running


@pytest.fixture
def idle_server(tool_server: RunningServer) -> Iterator[RunningServer]:
    yield tool_server
    tool_server.wait_idle()


def client_of(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture
def client(idle_server: RunningServer) -> openai.OpenAI:
    return client_of(idle_server)


def follows(name: str, arguments: dict[str, Any]) -> bool:
    """Whether `arguments` fit the tool's schema (the enums and required keys of these two tools)."""
    spec = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}[name]
    if set(arguments) != set(spec["required"]):
        return False
    return all(arguments[k] in prop["enum"] if "enum" in prop else isinstance(arguments[k], str)
               for k, prop in spec["properties"].items())


class Reply(NamedTuple):
    content: str | None
    calls: list[tuple[str, str, str]]  # (id, name, arguments)
    finish: str
    reasoning: str | None


def create_reply(client: openai.OpenAI, stream: bool, **kwargs: Any) -> Reply:
    """Choice 0 of a chat completion (with TOOLS unless told otherwise), from the whole response
    or from the stream's deltas joined the way OpenAI's clients join them."""
    kwargs = {"model": MODEL_NAME, "messages": MESSAGES, "tools": TOOLS, "max_tokens": 96, "temperature": 0,
              **kwargs}
    if not stream:
        choice = client.chat.completions.create(**kwargs).choices[0]
        calls = [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
        reasoning = getattr(choice.message, "reasoning", None)
        assert reasoning == getattr(choice.message, "reasoning_content", None), "both names carry the same text"
        return Reply(choice.message.content, calls, choice.finish_reason, reasoning)
    content: str | None = None
    reasoning = None
    calls: dict[int, list[str]] = {}
    finish = ""
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        if delta.content:
            content = (content or "") + delta.content
        if getattr(delta, "reasoning", None):
            reasoning = (reasoning or "") + delta.reasoning
        for call in delta.tool_calls or []:
            if call.id is not None:
                assert call.index not in calls and call.function.name, "a call opens once, with its id and name"
                calls[call.index] = [call.id, call.function.name, ""]
            calls[call.index][2] += call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    return Reply(content, [tuple(calls[i]) for i in sorted(calls)], finish, reasoning)


def create(client: openai.OpenAI, stream: bool, **kwargs: Any) -> tuple[str | None, list[tuple[str, str, str]], str]:
    """(content, calls, finish_reason) of `create_reply`."""
    return create_reply(client, stream, **kwargs)[:3]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_named_tool_choice(client: openai.OpenAI, stream: bool) -> None:
    """A named function is always called, with arguments that follow its parameters' schema."""
    choice = {"type": "function", "function": {"name": "get_weather"}}
    content, calls, finish = create(client, stream, tool_choice=choice, temperature=1.0, seed=3)
    assert content is None and finish == "stop" and len(calls) == 1
    call_id, name, arguments = calls[0]
    assert call_id.startswith("call_") and name == "get_weather" and follows(name, json.loads(arguments))


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_required_tool_choice(client: openai.OpenAI, stream: bool) -> None:
    """At least one call, each to one of the tools with fitting arguments; parallel_tool_calls=false: one."""
    for seed in range(3):
        content, calls, finish = create(client, stream, tool_choice="required", temperature=1.0, seed=seed)
        assert content is None and finish == "tool_calls" and calls
        assert all(follows(name, json.loads(arguments)) for _, name, arguments in calls)
        assert len({call_id for call_id, _, _ in calls}) == len(calls)
    _, calls, _ = create(client, stream, tool_choice="required", parallel_tool_calls=False, temperature=1.0, seed=0)
    assert len(calls) == 1


def test_stream_and_whole_agree(client: openai.OpenAI) -> None:
    """Greedy: the streamed deltas join into the whole response, ids aside."""
    for choice in ("required", {"type": "function", "function": {"name": "get_time"}}):
        whole, streamed = (create(client, stream, tool_choice=choice) for stream in (False, True))
        assert (whole[0], [c[1:] for c in whole[1]], whole[2]) == (streamed[0], [c[1:] for c in streamed[1]],
                                                                    streamed[2])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_auto_tool_choice_reads_the_templates_format(client: openai.OpenAI, stream: bool) -> None:
    """tool_choice "auto" (the default with tools): a <tool_call> block in the reply, the format
    the fixture's Qwen-style template teaches, becomes a tool call; the text before it is content."""
    content, calls, finish = create(client, stream, max_tokens=256, extra_body={"structured_outputs": {"regex": HERMES_REPLY}})
    assert content == "Checking." and finish == "tool_calls"
    assert [(name, json.loads(arguments)) for _, name, arguments in calls] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"})]


def test_auto_tool_choice_without_a_call_is_content(client: openai.OpenAI) -> None:
    content, calls, finish = create(client, False, tool_choice="auto", max_tokens=32,
                                    extra_body={"structured_outputs": {"regex": "It is sunny\\."}})
    assert (content, calls, finish) == ("It is sunny.", [], "stop")


def test_tool_results_in_the_conversation(client: openai.OpenAI, idle_server: RunningServer) -> None:
    """A second turn carries the assistant's call and the tool's result; the template renders both,
    with the tools, and the arguments (JSON text on the wire) as the object they encode."""
    conversation = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, sunny"},
    ]
    reply = client.chat.completions.create(model=MODEL_NAME, messages=conversation, tools=TOOLS, max_tokens=4,
                                           extra_body={"ignore_eos": True})
    assert reply.usage.completion_tokens == 4
    body = {"messages": conversation, "tools": TOOLS}
    with_tools = idle_server.request("POST", "/tokenize", body).json()["tokens"]
    without = idle_server.request("POST", "/tokenize", {"messages": conversation}).json()["tokens"]
    detok = idle_server.request("POST", "/detokenize", {"tokens": with_tools}).json()["prompt"]
    assert len(with_tools) > len(without) and '"name": "get_weather"' in detok
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>' in detok
    assert "<tool_response>\n18 degrees, sunny\n</tool_response>" in detok


def test_chat_template_kwargs(idle_server: RunningServer) -> None:
    """Variables reach the template; apply_chat_template's own parameters may not be set through it."""
    ok = idle_server.request("POST", "/v1/chat/completions", {
        "model": MODEL_NAME, "messages": MESSAGES, "max_tokens": 2, "chat_template_kwargs": {"enable_thinking": False}})
    assert ok.status == 200
    bad = idle_server.request("POST", "/v1/chat/completions", {
        "model": MODEL_NAME, "messages": MESSAGES, "chat_template_kwargs": {"chat_template": "{{ 7 * 7 }}"}})
    assert bad.status == 400 and bad.json()["error"]["param"] == "chat_template_kwargs"


F = {"type": "function", "function": {"name": "f"}}
BAD_TOOLS = [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [F], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [F], "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
    ({"tools": [F, F]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "no spaces allowed"}}]}, "tools"),
    ({"tools": [{"type": "retrieval"}]}, "tools"),
    ({"tools": [F], "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}],
      "tool_choice": "required"}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}],
      "tool_choice": {"type": "function", "function": {"name": "f"}}}, "tools"),
]


@pytest.mark.parametrize(("fields", "param"), BAD_TOOLS, ids=[json.dumps(f) for f, _ in BAD_TOOLS])
def test_invalid_tools_are_400(idle_server: RunningServer, fields: dict, param: str) -> None:
    body = {"model": MODEL_NAME, "messages": MESSAGES, **fields}
    assert_error(idle_server.request("POST", "/v1/chat/completions", body), 400, param)
    assert_still_serving(idle_server)


@pytest.fixture(scope="module")
def llama3_server(model_dir: pathlib.Path) -> Iterator[RunningServer]:
    with serve_in_thread(tool_server_args(model_dir, "--tool-call-parser", "llama3_json")) as running:
        yield running


def test_tool_call_parser_flag(llama3_server: RunningServer) -> None:
    """--tool-call-parser picks the format of auto calls: Llama 3's bare JSON here."""
    client = client_of(llama3_server)
    for stream in (False, True):
        content, calls, finish = create(client, stream, max_tokens=256,
                                        extra_body={"structured_outputs": {"regex": LLAMA_REPLY}})
        assert (content, finish) == (None, "tool_calls") and [c[1:] for c in calls] == [("get_time", '{"zone": "UTC"}')]
    llama3_server.wait_idle()


MISTRAL_REPLY = r'\[TOOL_CALLS\]get_time\[ARGS\]\{"zone": "UTC"\}'


def test_mistral_calls_with_mistral_ids(model_dir: pathlib.Path) -> None:
    """--tool-call-parser mistral: the v11 format's calls, with the 9-character ids Mistral's
    templates require when the call comes back in the conversation."""
    with serve_in_thread(tool_server_args(model_dir, "--tool-call-parser", "mistral")) as running:
        client = client_of(running)
        for stream in (False, True):
            content, calls, finish = create(client, stream, max_tokens=256,
                                            extra_body={"structured_outputs": {"regex": MISTRAL_REPLY}})
            assert (content, finish) == (None, "tool_calls")
            [(call_id, name, arguments)] = calls
            assert (name, json.loads(arguments)) == ("get_time", {"zone": "UTC"})
            assert len(call_id) == 9 and call_id.isalnum()
        running.wait_idle()


KIMI_REPLY = (r"<\|tool_calls_section_begin\|><\|tool_call_begin\|>functions\.get_time:0<\|tool_call_argument_begin\|>"
              r'\{"zone": "UTC"\}<\|tool_call_end\|><\|tool_calls_section_end\|>')
GLM45_REPLY = (r"<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>1984</arg_value>\n<arg_key>unit</arg_key>\n"
               r"<arg_value>celsius</arg_value>\n</tool_call>")


@pytest.mark.parametrize(("parser", "reply", "expected"), [
    # Kimi K2: the call id is the model's own, which its template expects back.
    ("kimi_k2", KIMI_REPLY, ("functions.get_time:0", "get_time", {"zone": "UTC"})),
    # GLM-4.5: bare argument values, a string-typed one kept as written though it reads as a number.
    ("glm45", GLM45_REPLY, (None, "get_weather", {"city": "1984", "unit": "celsius"})),
])
def test_kimi_k2_and_glm45_calls(model_dir: pathlib.Path, parser: str, reply: str, expected: tuple) -> None:
    with serve_in_thread(tool_server_args(model_dir, "--tool-call-parser", parser)) as running:
        client = client_of(running)
        for stream in (False, True):
            content, calls, finish = create(client, stream, max_tokens=256,
                                            extra_body={"structured_outputs": {"regex": reply}})
            assert (content, finish) == (None, "tool_calls")
            [(call_id, name, arguments)] = calls
            assert (name, json.loads(arguments)) == expected[1:]
            assert call_id == expected[0] if expected[0] else call_id.startswith("call_")
        running.wait_idle()


def test_auto_tool_choice_refused_without_a_parser(model_dir: pathlib.Path) -> None:
    """With no tool-call format, "auto" is a 400 that says what to do; the others still work."""
    with serve_in_thread(tool_server_args(model_dir, "--tool-call-parser", "none")) as running:
        client = client_of(running)
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, tools=TOOLS)
        assert info.value.param == "tool_choice" and "--tool-call-parser" in info.value.message
        _, calls, _ = create(client, False, tool_choice="required")
        assert calls
