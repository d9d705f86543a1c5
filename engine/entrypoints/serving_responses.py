"""POST /v1/responses: OpenAI's Responses API, served through the chat endpoint's machinery.

The request is restated as a chat completion (the same template, tools,
reasoning parser and structured outputs), and the chat reply becomes output
items in the order the model wrote them: reasoning, the message, function calls. Streams are the chat
stream's deltas turned into Responses events: each item is opened
(`response.output_item.added`), filled by deltas, and closed, between
`response.created` and `response.completed` (or `response.incomplete` when
max_output_tokens cut the reply). A finished response is stored unless the
request says `store: false` (`response_store`), for `previous_response_id`
and GET /v1/responses/{id}.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from pagoda import affinity
from pagoda.engine.entrypoints.protocol import ChatCompletionChunk, ChatCompletionResponse, ChatResponseMessage
from pagoda.engine.entrypoints.protocol_responses import (
    ChatForResponses,
    FunctionCallOutput,
    IncompleteDetails,
    InputTokensDetails,
    MessageOutput,
    OutputItem,
    OutputText,
    OutputTokensDetails,
    ReasoningOutput,
    ReasoningText,
    ResponseEvent,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
)
from pagoda.engine.entrypoints.response_store import ResponseStore, StoredResponse
from pagoda.engine.entrypoints.serving_chat import OpenAIServingChat
from pagoda.engine.entrypoints.serving_engine import APIError, ChoiceState, RequestContext, bad_request
from pagoda.engine.outputs import RequestOutput


def _item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def output_items(message: ChatResponseMessage) -> list[OutputItem]:
    """A chat reply as Responses output items, in the order the model wrote them: reasoning, the
    message (text before any call), then the function calls."""
    items: list[OutputItem] = []
    if message.reasoning:
        items.append(ReasoningOutput(id=_item_id("rs"), content=[ReasoningText(text=message.reasoning)]))
    if message.content or not message.tool_calls:
        items.append(MessageOutput(id=_item_id("msg"), content=[OutputText(text=message.content or "")]))
    for call in message.tool_calls or ():
        items.append(FunctionCallOutput(id=_item_id("fc"), call_id=call.id, name=call.function.name,
                                        arguments=call.function.arguments))
    return items


def as_input_items(items: list[OutputItem]) -> list[dict[str, Any]]:
    """Output items restated as the input items a later turn would send back."""
    restated: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, MessageOutput):
            restated.append({"type": "message", "role": "assistant",
                             "content": "".join(part.text for part in item.content)})
        elif isinstance(item, FunctionCallOutput):
            restated.append({"type": "function_call", "call_id": item.call_id, "name": item.name,
                             "arguments": item.arguments})
        else:
            restated.append({"type": "reasoning"})
    return restated


@dataclass
class _Open:
    """An output item being streamed: its place, and what it holds so far."""

    index: int
    item: OutputItem
    text: str = ""


@dataclass
class _EventStream(ChoiceState):
    """A response stream's memory: events sent, items done, the item open, the calls by chat index."""

    sequence: int = 0
    done: list[OutputItem] = field(default_factory=list)
    open: _Open | None = None
    calls: dict[int, _Open] = field(default_factory=dict)


class OpenAIServingResponses(OpenAIServingChat):
    endpoint = "responses"

    def __init__(self, *args: Any, store: ResponseStore, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.store = store

    def stored(self, response_id: str) -> StoredResponse:
        entry = self.store.get(response_id)
        if entry is None:
            raise APIError(404, f"Response with id '{response_id}' not found.", type="NotFoundError",
                           param="response_id")
        return entry

    async def create_response(self, request: ResponsesRequest, raw_request: Request) -> Response:
        if request.previous_response_id is not None:
            if not self.store.enabled:
                raise APIError(400, "previous_response_id needs stored responses, and this server stores none "
                                    "(--responses-store-size 0): send the whole conversation as input",
                               param="previous_response_id")
            previous = self.store.get(request.previous_response_id)
            if previous is None:
                raise APIError(404, f"Previous response with id '{request.previous_response_id}' not found.",
                               type="NotFoundError", param="previous_response_id")
            request = request.continued(previous.items)
        try:
            chat = request.to_chat()
        except ValueError as exc:
            raise bad_request(exc, request, "input") from None
        return await self.create_chat_completion(chat, raw_request)

    # ---- the response object ----------------------------------------------------------------

    def _response(self, ctx: RequestContext, status: str, items: list[OutputItem],
                  finish_reason: str | None = None) -> ResponseObject:
        request = ctx.request.responses
        usage = None
        if status != "in_progress":
            counts = ctx.usage()
            reasoning = "".join(part.text for item in items if isinstance(item, ReasoningOutput) for part in item.content)
            usage = ResponseUsage(
                input_tokens=counts.prompt_tokens, output_tokens=counts.completion_tokens, total_tokens=counts.total_tokens,
                input_tokens_details=InputTokensDetails(cached_tokens=counts.prompt_tokens_details.cached_tokens),
                output_tokens_details=OutputTokensDetails(
                    reasoning_tokens=len(self.tokenizer.encode(reasoning, add_special_tokens=False)) if reasoning else 0),
            )
        incomplete = finish_reason == "length"
        return ResponseObject(
            id=ctx.request_id, created_at=ctx.created, model=ctx.model, output=items, usage=usage,
            status="incomplete" if incomplete and status != "in_progress" else status,
            incomplete_details=IncompleteDetails(reason="max_output_tokens") if incomplete else None,
            instructions=request.instructions, max_output_tokens=request.max_output_tokens,
            temperature=request.temperature, top_p=request.top_p, tools=request.tools or [],
            tool_choice=request.tool_choice or "auto", parallel_tool_calls=request.parallel_tool_calls,
            text={"format": (request.text.format.model_dump(by_alias=True, exclude_none=True)
                             if request.text is not None and request.text.format is not None else {"type": "text"})},
            metadata=request.metadata or {}, previous_response_id=request.previous_response_id,
            store=self._stores(request),
        )

    def new_request_id(self, raw_request: Request, request: ChatForResponses) -> str:
        """Carries the conversation's affinity point (see `pagoda.affinity`): from the
        previous response, else from the gateway's header."""
        previous = request.responses.previous_response_id if request.responses is not None else None
        point = affinity.point_of_response(previous)
        if point is None:
            point = affinity.parse_point(raw_request.headers.get(affinity.HEADER))
        return affinity.response_id(point)

    def _stores(self, request: ResponsesRequest) -> bool:
        return self.store.enabled and request.store is not False

    def _finished(self, ctx: RequestContext, response: ResponseObject) -> ResponseObject:
        """Stores a finished response (unless asked not to) with its conversation."""
        request = ctx.request.responses
        if self._stores(request):
            self.store.put(response.id, StoredResponse(request.input_items() + as_input_items(response.output),
                                                       response.model_dump()))
        return response

    def full_response(self, ctx: RequestContext, outputs: list[RequestOutput]) -> ResponseObject:
        chat: ChatCompletionResponse = super().full_response(ctx, outputs)
        choice = chat.choices[0]
        return self._finished(ctx, self._response(ctx, "completed", output_items(choice.message),
                                                  choice.finish_reason))

    # ---- streaming ----------------------------------------------------------------------------

    def stream_chunks(
        self, ctx: RequestContext, prompt_index: int, output: RequestOutput, state: dict[int, ChoiceState],
    ) -> list[ResponseEvent]:
        stream = state.get(-1)
        events: list[ResponseEvent] = []
        if not isinstance(stream, _EventStream):
            stream = state[-1] = _EventStream()
            snapshot = self._response(ctx, "in_progress", []).model_dump()
            events += [self._event(stream, "response.created", response=snapshot),
                       self._event(stream, "response.in_progress", response=snapshot)]
        chunk: ChatCompletionChunk
        for chunk in super().stream_chunks(ctx, prompt_index, output, state):
            choice = chunk.choices[0]
            delta = choice.delta
            if delta.reasoning:
                events += self._text_delta(stream, "reasoning", delta.reasoning)
            for call in delta.tool_calls or ():
                events += self._call_delta(stream, call.index, call.id, call.function)
            if delta.content:
                events += self._text_delta(stream, "message", delta.content)
            if choice.finish_reason is not None:
                events += self._close(stream)
                status = "incomplete" if choice.finish_reason == "length" else "completed"
                final = self._finished(ctx, self._response(ctx, status, stream.done, choice.finish_reason))
                events.append(self._event(stream, f"response.{final.status}", response=final.model_dump()))
        return events

    @staticmethod
    def _event(stream: _EventStream, kind: str, **fields: Any) -> ResponseEvent:
        event = ResponseEvent(type=kind, sequence_number=stream.sequence, **fields)
        stream.sequence += 1
        return event

    def _open(self, stream: _EventStream, item: OutputItem) -> list[ResponseEvent]:
        events = self._close(stream) if stream.open is not None else []
        stream.open = _Open(len(stream.done), item)
        status = {"status": "in_progress"}
        opened = item.model_copy(update=status)
        events.append(self._event(stream, "response.output_item.added", output_index=stream.open.index,
                                  item=opened.model_dump()))
        if isinstance(item, MessageOutput):
            events.append(self._event(stream, "response.content_part.added", item_id=item.id,
                                      output_index=stream.open.index, content_index=0,
                                      part=OutputText(text="").model_dump()))
        return events

    def _text_delta(self, stream: _EventStream, kind: str, text: str) -> list[ResponseEvent]:
        events: list[ResponseEvent] = []
        if stream.open is None or stream.open.item.type != kind:
            item = (ReasoningOutput(id=_item_id("rs")) if kind == "reasoning"
                    else MessageOutput(id=_item_id("msg")))
            events += self._open(stream, item)
        stream.open.text += text
        name = "response.reasoning_text.delta" if kind == "reasoning" else "response.output_text.delta"
        extra = {} if kind == "reasoning" else {"logprobs": []}
        events.append(self._event(stream, name, item_id=stream.open.item.id, output_index=stream.open.index,
                                  content_index=0, delta=text, **extra))
        return events

    def _call_delta(self, stream: _EventStream, index: int, call_id: str | None, function: Any) -> list[ResponseEvent]:
        events: list[ResponseEvent] = []
        if index not in stream.calls:
            item = FunctionCallOutput(id=_item_id("fc"), call_id=call_id or _item_id("call"),
                                      name=function.name or "", arguments="")
            events += self._open(stream, item)
            stream.calls[index] = stream.open
        current = stream.calls[index]
        if function.arguments:
            current.text += function.arguments
            events.append(self._event(stream, "response.function_call_arguments.delta", item_id=current.item.id,
                                      output_index=current.index, delta=function.arguments))
        return events

    def _close(self, stream: _EventStream) -> list[ResponseEvent]:
        """Closes the open item: its text's done events, then output_item.done with the whole item."""
        current, stream.open = stream.open, None
        if current is None:
            return []
        item, events = current.item, []
        if isinstance(item, ReasoningOutput):
            item = item.model_copy(update={"content": [ReasoningText(text=current.text)]})
            events.append(self._event(stream, "response.reasoning_text.done", item_id=item.id,
                                      output_index=current.index, content_index=0, text=current.text))
        elif isinstance(item, MessageOutput):
            part = OutputText(text=current.text)
            item = item.model_copy(update={"content": [part]})
            events += [
                self._event(stream, "response.output_text.done", item_id=item.id, output_index=current.index,
                            content_index=0, text=current.text, logprobs=[]),
                self._event(stream, "response.content_part.done", item_id=item.id, output_index=current.index,
                            content_index=0, part=part.model_dump()),
            ]
        else:
            item = item.model_copy(update={"arguments": current.text})
            events.append(self._event(stream, "response.function_call_arguments.done", item_id=item.id,
                                      output_index=current.index, name=item.name, arguments=current.text))
        stream.done.append(item)
        events.append(self._event(stream, "response.output_item.done", output_index=current.index,
                                  item=item.model_dump()))
        return events
