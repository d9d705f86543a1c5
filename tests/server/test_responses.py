"""POST /v1/responses through the official openai client: the same replies as chat completions,
as output items (reasoning, message, function calls), whole or as the Responses event stream."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.server.conftest import MODEL_NAME, RunningServer, serve_in_thread
from tests.server.test_tool_calls import HERMES_REPLY, TOOLS, client_of, follows, tool_server_args

openai = pytest.importorskip("openai")

# The chat tools in the Responses API's flat shape.
FLAT_TOOLS = [{"type": "function", **tool["function"]} for tool in TOOLS]
GREEDY = {"temperature": 0}
THOUGHT = r"<think>\nThe user asks about Paris\.\n</think>\n\n"


@pytest.fixture(scope="module")
def server(model_dir: pathlib.Path) -> Iterator[RunningServer]:
    with serve_in_thread(tool_server_args(model_dir, "--reasoning-parser", "qwen3")) as running:
        yield running


@pytest.fixture
def client(server: RunningServer) -> openai.OpenAI:
    return client_of(server)


def _stream(client: openai.OpenAI, **kwargs: Any) -> list[Any]:
    events = list(client.responses.create(model=MODEL_NAME, stream=True, **kwargs))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1].type in ("response.completed", "response.incomplete")
    return events


def test_text_reply_equals_chat(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model=MODEL_NAME, max_tokens=20, messages=[{"role": "system", "content": "Be brief."},
                                                   {"role": "user", "content": "Tell me about Paris."}], **GREEDY)
    kwargs = dict(input="Tell me about Paris.", instructions="Be brief.", max_output_tokens=20, **GREEDY)
    whole = client.responses.create(model=MODEL_NAME, **kwargs)
    assert whole.object == "response" and whole.id.startswith("resp")
    assert whole.output_text == chat.choices[0].message.content
    assert [item.type for item in whole.output] == ["message"]
    assert whole.usage.input_tokens == chat.usage.prompt_tokens
    assert whole.usage.output_tokens == chat.usage.completion_tokens
    assert (whole.status, whole.incomplete_details.reason) == ("incomplete", "max_output_tokens")
    events = _stream(client, **kwargs)
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == whole.output_text
    assert [e.type for e in events if not e.type.endswith(".delta")][2:] == [
        "response.output_item.added", "response.content_part.added", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.incomplete"]
    assert events[-1].response.output_text == whole.output_text


def test_function_calls_are_output_items(client: openai.OpenAI) -> None:
    kwargs = dict(input="What is the weather in Paris?", tools=FLAT_TOOLS, max_output_tokens=96,
                  tool_choice={"type": "function", "name": "get_weather"}, **GREEDY)
    whole = client.responses.create(model=MODEL_NAME, **kwargs)
    [call] = [item for item in whole.output if item.type == "function_call"]
    assert call.name == "get_weather" and follows(call.name, json.loads(call.arguments))
    assert call.call_id.startswith("call_") and whole.status == "completed"
    events = _stream(client, **kwargs)
    streamed = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    [done] = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert streamed == done.arguments == call.arguments and done.name == "get_weather"


def test_a_conversation_with_calls_and_their_outputs_equals_chat(client: openai.OpenAI) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    chat = client.chat.completions.create(model=MODEL_NAME, max_tokens=12, tools=TOOLS, **GREEDY, messages=[
        {"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}])
    reply = client.responses.create(model=MODEL_NAME, max_output_tokens=12, tools=FLAT_TOOLS, **GREEDY, input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny, 21 C"}])
    assert reply.output_text == chat.choices[0].message.content
    assert reply.usage.input_tokens == chat.usage.prompt_tokens


def test_json_schema_text_format(client: openai.OpenAI) -> None:
    schema = {"type": "object", "additionalProperties": False, "required": ["answer"],
              "properties": {"answer": {"enum": ["yes", "no"]}}}
    reply = client.responses.create(model=MODEL_NAME, input="Is Paris in France?", max_output_tokens=64,
                                    text={"format": {"type": "json_schema", "name": "verdict", "schema": schema}},
                                    **GREEDY)
    assert json.loads(reply.output_text)["answer"] in ("yes", "no")
    assert reply.text.format.type == "json_schema"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_reasoning_message_and_call_are_items_in_order(client: openai.OpenAI, stream: bool) -> None:
    kwargs = dict(input="What is the weather in Paris?", tools=FLAT_TOOLS, max_output_tokens=384, **GREEDY,
                  extra_body={"structured_outputs": {"regex": THOUGHT + HERMES_REPLY}})
    if stream:
        events = _stream(client, **kwargs)
        output = events[-1].response.output
        reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
        assert reasoning == output[0].content[0].text
    else:
        output = client.responses.create(model=MODEL_NAME, **kwargs).output
    assert [item.type for item in output] == ["reasoning", "message", "function_call"]
    assert output[0].content[0].text == "\nThe user asks about Paris.\n"
    assert output[1].content[0].text == "Checking."
    assert json.loads(output[2].arguments) == {"city": "Paris", "unit": "celsius"}


@pytest.mark.parametrize(("body", "param"), [
    ({"input": []}, "input"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text"),
])
def test_what_cannot_be_served_is_refused(server: RunningServer, body: dict, param: str) -> None:
    answer = server.request("POST", "/v1/responses", {"model": MODEL_NAME, **body})
    assert answer.status == 400 and answer.json()["error"]["param"] == param


def test_stored_responses_continue_a_conversation(client: openai.OpenAI, server: RunningServer) -> None:
    """previous_response_id continues the stored conversation: the same prompt (and greedy reply)
    as sending the whole conversation as input, the earlier instructions left behind."""
    first = client.responses.create(model=MODEL_NAME, input="My name is Ada.", instructions="Be brief.",
                                    max_output_tokens=6, **GREEDY)
    assert first.store and client.responses.retrieve(first.id).model_dump() == first.model_dump()
    second = client.responses.create(model=MODEL_NAME, input="What is my name?", previous_response_id=first.id,
                                     max_output_tokens=6, **GREEDY)
    assert second.previous_response_id == first.id
    whole = [{"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": first.output_text},
             {"role": "user", "content": "What is my name?"}]
    stateless = client.responses.create(model=MODEL_NAME, input=whole, max_output_tokens=6, store=False, **GREEDY)
    assert second.usage.input_tokens == stateless.usage.input_tokens
    assert second.output_text == stateless.output_text
    # A streamed continuation is stored too, and continues in turn.
    events = _stream(client, input="And again?", previous_response_id=second.id, max_output_tokens=4, **GREEDY)
    third = events[-1].response
    assert client.responses.retrieve(third.id).output_text == third.output_text
    fourth = client.responses.create(model=MODEL_NAME, input="Once more.", previous_response_id=third.id,
                                     max_output_tokens=2, **GREEDY)
    assert fourth.usage.input_tokens > third.usage.input_tokens > second.usage.input_tokens
    # store false keeps nothing; a deleted response is gone for good.
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(stateless.id)
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError, match="Previous response"):
        client.responses.create(model=MODEL_NAME, input="hi", previous_response_id=first.id)


def test_the_store_keeps_the_most_recently_used() -> None:
    from pagoda.engine.entrypoints.response_store import ResponseStore, StoredResponse

    store = ResponseStore(2)
    for name in ("a", "b"):
        store.put(name, StoredResponse([], {"id": name}))
    assert store.get("a") is not None  # a is now the most recently used
    store.put("c", StoredResponse([], {"id": "c"}))
    assert (store.get("b"), len(store)) == (None, 2) and store.get("a") is not None
    assert not ResponseStore(0).enabled
    with pytest.raises(ValueError):
        ResponseStore(-1)


def test_without_a_store_previous_response_id_is_refused(model_dir: pathlib.Path) -> None:
    with serve_in_thread([str(model_dir), "--served-model-name", MODEL_NAME, "--responses-store-size", "0"]) as bare:
        answer = bare.request("POST", "/v1/responses", {"model": MODEL_NAME, "input": "hi",
                                                        "previous_response_id": "resp_1"})
        assert answer.status == 400 and answer.json()["error"]["param"] == "previous_response_id"
        created = bare.request("POST", "/v1/responses", {"model": MODEL_NAME, "input": "hi", "max_output_tokens": 2})
        assert created.json()["store"] is False
