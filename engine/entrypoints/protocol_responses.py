"""OpenAI's Responses API (POST /v1/responses): its request, output items and stream events.

A request carries its conversation as `input` (messages, earlier function
calls and their outputs), after the stored conversation of its
`previous_response_id` if it names one (`response_store`). It is served by
the chat machinery: `to_chat` states the same request as a chat completion,
and the reply becomes output items: the reasoning (with a reasoning parser),
function calls, and the message.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from pagoda.engine.entrypoints.protocol import ChatCompletionRequest, _Request


class InputText(_Request):
    type: Literal["input_text", "output_text", "text"] = "input_text"
    text: str


class InputImage(_Request):
    type: Literal["input_image"]
    image_url: str  # a data: URL or an http(s) URL (uploaded files, file_id, are not served)
    detail: Literal["auto", "low", "high"] | None = None


InputPart = Annotated[InputText | InputImage, Field(discriminator="type")]


class MessageItem(_Request):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputPart]

    def chat_content(self) -> str | list[dict[str, Any]]:
        """The content as a chat message holds it: text, or with images a list of text and image_url parts."""
        if isinstance(self.content, str):
            return self.content
        if not any(isinstance(part, InputImage) for part in self.content):
            return "".join(part.text for part in self.content)
        return [{"type": "image_url", "image_url": {"url": part.image_url}} if isinstance(part, InputImage)
                else {"type": "text", "text": part.text} for part in self.content]


class FunctionCallItem(_Request):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None


class FunctionCallOutputItem(_Request):
    type: Literal["function_call_output"]
    call_id: str
    output: str


class ReasoningItem(_Request):
    """An earlier turn's reasoning, given back: not shown to the model again (chat templates drop it too)."""

    type: Literal["reasoning"]


InputItem = Union[MessageItem, FunctionCallItem, FunctionCallOutputItem, ReasoningItem]


class FunctionTool(_Request):
    type: Literal["function"] = "function"
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionChoice(_Request):
    type: Literal["function"] = "function"
    name: str


class TextFormat(_Request):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextConfig(_Request):
    format: TextFormat | None = None


# Sampling options beyond OpenAI's, under their vLLM names, passed on to the chat request as vLLM does.
_ENGINE_EXTRAS = ("top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "seed", "stop",
                  "ignore_eos", "min_tokens", "stop_token_ids", "allowed_token_ids", "bad_words", "logit_bias", "structured_outputs",
                  "chat_template_kwargs", "cache_salt", "priority")


class ReasoningConfig(BaseModel):
    """How long a reasoning model thinks (the chat template's reasoning_effort); a summary is not made."""

    effort: Literal["minimal", "low", "medium", "high"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


_INPUT_ITEMS: TypeAdapter[list[InputItem]] = TypeAdapter(list[InputItem])


class ResponsesRequest(_Request):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | list[InputItem]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["auto", "none", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None

    def input_items(self) -> list[dict[str, Any]]:
        """The input as a list of items (a bare string is one user message)."""
        if isinstance(self.input, str):
            return [{"type": "message", "role": "user", "content": self.input}]
        return [item.model_dump(exclude_none=True) for item in self.input]

    def continued(self, history: list[dict[str, Any]]) -> ResponsesRequest:
        """This request with `history` (a stored conversation, as input items) before its input."""
        return self.model_copy(update={"input": _INPUT_ITEMS.validate_python([*history, *self.input_items()])})

    def _messages(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        if isinstance(self.input, str):
            return [*messages, {"role": "user", "content": self.input}]
        for item in self.input:
            if isinstance(item, MessageItem):
                messages.append({"role": item.role, "content": item.chat_content()})
            elif isinstance(item, FunctionCallItem):
                call = {"id": item.call_id, "type": "function",
                        "function": {"name": item.name, "arguments": item.arguments}}
                last = messages[-1] if messages else None
                if last is not None and last["role"] == "assistant" and last.get("tool_calls") is not None:
                    last["tool_calls"].append(call)  # parallel calls of one turn
                else:
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            elif isinstance(item, FunctionCallOutputItem):
                messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
        return messages

    def _response_format(self) -> dict[str, Any] | None:
        fmt = self.text.format if self.text is not None else None
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return {"type": "json_object"}
        if fmt.schema_ is None:
            raise ValueError("text.format of type json_schema needs a schema")
        return {"type": "json_schema",
                "json_schema": {"name": fmt.name or "response", "schema": fmt.schema_, "strict": fmt.strict}}

    def to_chat(self) -> ChatForResponses:
        """The same request as a chat completion; ValueError (pydantic's included) for what cannot be."""
        if not self._messages():
            raise ValueError("input holds no message")
        tool_choice: Any = self.tool_choice
        if isinstance(tool_choice, FunctionChoice):
            tool_choice = {"type": "function", "function": {"name": tool_choice.name}}
        tools = None
        if self.tools is not None:
            tools = [{"type": "function", "function": tool.model_dump(exclude={"type"}, exclude_none=True)}
                     for tool in self.tools]
        chat = ChatForResponses.model_validate({
            "model": self.model, "messages": self._messages(), "max_completion_tokens": self.max_output_tokens,
            "temperature": self.temperature, "top_p": self.top_p, "stream": self.stream, "tools": tools,
            "tool_choice": tool_choice, "parallel_tool_calls": self.parallel_tool_calls,
            "response_format": self._response_format(), "user": self.user,
            "reasoning_effort": self.reasoning.effort if self.reasoning is not None else None,
            **{key: value for key, value in (self.model_extra or {}).items() if key in _ENGINE_EXTRAS},
        })
        chat.responses = self
        return chat


class ChatForResponses(ChatCompletionRequest):
    """A chat request that carries the Responses request it restates, for the reply's formatting."""

    responses: ResponsesRequest | None = Field(None, exclude=True)


# ---- output -------------------------------------------------------------------------------


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class MessageOutput(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"] = "completed"
    role: Literal["assistant"] = "assistant"
    content: list[OutputText] = Field(default_factory=list)


class ReasoningText(BaseModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class ReasoningOutput(BaseModel):
    type: Literal["reasoning"] = "reasoning"
    id: str
    summary: list[Any] = Field(default_factory=list)
    content: list[ReasoningText] = Field(default_factory=list)
    status: Literal["in_progress", "completed", "incomplete"] = "completed"


class FunctionCallOutput(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"] = "completed"


OutputItem = Union[ReasoningOutput, FunctionCallOutput, MessageOutput]


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete"]
    incomplete_details: IncompleteDetails | None = None
    error: Any = None
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    usage: ResponseUsage | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[FunctionTool] = Field(default_factory=list)
    tool_choice: Any = "auto"
    parallel_tool_calls: bool = True
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    previous_response_id: str | None = None
    store: bool = False
    metadata: dict[str, str] = Field(default_factory=dict)


class ResponseEvent(BaseModel):
    """One server-sent event of a streamed response; its fields depend on its type."""

    model_config = ConfigDict(extra="allow")
    type: str
    sequence_number: int
