"""Request and response bodies of the OpenAI-compatible API, as pydantic models.

Pydantic checks only shapes and types here (a wrong type is a 400 naming the
field); value ranges are checked once, by SamplingParams, whose messages also
name the field. Unknown fields are ignored, as OpenAI clients send fields a
server may not know. These models are also the OpenAPI schema that the server
publishes and the fuzz tests generate requests from.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from pagoda.engine.sampling_params import SamplingParams, StructuredOutput

MAX_N = 128
"""Most choices per request (OpenAI's limit); each is a sequence in the batch."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _null_means_unset(cls, data: Any) -> Any:
        """Clients often send null for a field they leave unset: it gets the default."""
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


# ---- errors ----------------------------------------------------------------------------------


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


# ---- shared by completions and chat -----------------------------------------------------------


class StreamOptions(_Request):
    include_usage: bool = False


class JsonSchemaFormat(_Request):
    name: str = "response"
    description: str | None = None
    json_schema: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    """OpenAI's response_format: free text, any JSON object, or JSON following a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(_Request):
    """vLLM's structured_outputs: exactly one constraint on the text."""

    json_value: dict[str, Any] | str | None = Field(None, alias="json")
    json_object: bool = False
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None


class _SamplingRequest(_Request):
    """OpenAI sampling fields, plus the engine's extras under their vLLM names."""

    model: str | None = None
    n: int = Field(1, le=MAX_N)
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Engine extras.
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    stop_token_ids: list[int] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    # Requests share prefix-cache blocks only with requests of the same salt (vLLM's multi-tenant isolation).
    cache_salt: str | None = Field(None, min_length=1, max_length=256)
    # Under --scheduling-policy priority: lower runs first, and is preempted last.
    priority: int = Field(0, ge=-(2**31), lt=2**31)
    # Keep only the prompt's last N tokens (-1: as many as fit beside the completion), vLLM's extra.
    truncate_prompt_tokens: int | None = Field(None, ge=-1)
    # vLLM's: token ids beside the text, the prompt's and each choice's (a stream's chunks carry their new ones).
    return_token_ids: bool | None = None
    # vLLM's extras: the n most likely completions by beam search (n beams), ranked by
    # cumulative logprob / length ** length_penalty.
    use_beam_search: bool = False
    length_penalty: float = 1.0

    def beam_search_conflicts(self) -> dict[str, bool]:
        """Fields beam search cannot honour, and whether each is set."""
        return {"stream": self.stream, "logprobs": self.requested_logprobs() is not None,
                "prompt_logprobs": self.requested_prompt_logprobs() is not None,
                self.constraint_field: self.has_constraint}

    def check_beam_search(self) -> None:
        """ValueError, naming the field, for what use_beam_search cannot be combined with."""
        mixed = [name for name, on in self.beam_search_conflicts().items() if on]
        if self.use_beam_search and mixed:
            raise ValueError(f"use_beam_search: beam search answers whole completions, without {mixed[0]}")

    def requested_max_tokens(self) -> int | None:
        raise NotImplementedError

    @property
    def has_constraint(self) -> bool:
        """Whether a structured output is asked for (by either field)."""
        wants_format = self.response_format is not None and self.response_format.type != "text"
        return wants_format or self.structured_outputs is not None

    @property
    def constraint_field(self) -> str:
        """The field a structured output came from, for errors about it."""
        return "structured_outputs" if self.structured_outputs is not None else "response_format"

    def requested_constraint(self) -> StructuredOutput | None:
        """The structured output asked for by response_format or structured_outputs, if any."""
        wants_format = self.response_format is not None and self.response_format.type != "text"
        if wants_format and self.structured_outputs is not None:
            raise ValueError("response_format and structured_outputs cannot be combined: use one")
        if self.structured_outputs is not None:
            so = self.structured_outputs
            try:
                return StructuredOutput(json=so.json_value, json_object=so.json_object, regex=so.regex,
                                        choice=so.choice, grammar=so.grammar)
            except ValueError as exc:
                raise ValueError(f"structured_outputs: {exc}") from None
        if not wants_format:
            return None
        if self.response_format.type == "json_object":
            return StructuredOutput(json_object=True)
        if self.response_format.json_schema is None:
            raise ValueError("response_format of type json_schema needs json_schema.schema")
        return StructuredOutput(json=self.response_format.json_schema.json_schema)

    def requested_logprobs(self) -> int | None:
        """Top alternatives to return per token, or None for no logprobs."""
        raise NotImplementedError

    def requested_prompt_logprobs(self) -> int | None:
        """Top alternatives per prompt token, or None for no prompt logprobs."""
        return None

    def skips_special_tokens(self) -> bool:
        """Whether special tokens are left out of the text."""
        return self.skip_special_tokens

    def to_sampling_params(self, max_tokens: int, defaults: Mapping[str, Any] | None = None) -> SamplingParams:
        """Raises ValueError, naming the field, for any value out of range. `defaults` (the model's
        generation config) fill the sampling fields the request leaves unset."""
        bias = None
        if self.logit_bias is not None:
            bias = {}
            for key, value in self.logit_bias.items():
                try:
                    bias[int(key)] = value
                except ValueError:
                    raise ValueError(f"logit_bias keys must be token ids, got {key!r}") from None
        given = {
            **(defaults or {}),
            **{name: getattr(self, name)
               for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "top_k", "min_p",
                            "repetition_penalty")
               if getattr(self, name) is not None},
        }
        return SamplingParams(
            n=self.n, max_tokens=max_tokens, stop=self.stop, seed=self.seed, logit_bias=bias,
            ignore_eos=self.ignore_eos, min_tokens=self.min_tokens, stop_token_ids=self.stop_token_ids,
            skip_special_tokens=self.skips_special_tokens(), include_stop_str_in_output=self.include_stop_str_in_output,
            logprobs=self.requested_logprobs(), prompt_logprobs=self.requested_prompt_logprobs(),
            structured_output=self.requested_constraint(), allowed_token_ids=self.allowed_token_ids,
            bad_words=self.bad_words, **given,
        )

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


def _now() -> int:
    return int(time.time())


# ---- completions ------------------------------------------------------------------------------


class CompletionRequest(_SamplingRequest):
    # A string, a list of strings, token ids, or a list of token-id lists.
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: int | None = 16
    logprobs: int | None = None
    # The prompt in front of each choice's text (and, with logprobs, its tokens' logprobs in front of
    # the completion's): how evaluation harnesses score a text's likelihood.
    echo: bool = False
    # vLLM's extra: each prompt token's logprob and this many top alternatives, as `prompt_logprobs`.
    prompt_logprobs: int | None = Field(None, ge=0)
    # OpenAI fields the engine does not serve: refused by name rather than ignored (see `check_unserved`).
    suffix: str | None = None
    best_of: int | None = None

    def check_unserved(self) -> None:
        """ValueError, naming the field, for options that would otherwise be silently ignored."""
        if self.suffix:
            raise ValueError("suffix: fill-in-the-middle is not served; put the text after the gap in the prompt "
                             "as the model's FIM format expects")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of: only best_of equal to n is served (each sampled completion is returned)")

    def beam_search_conflicts(self) -> dict[str, bool]:
        return {**super().beam_search_conflicts(), "echo": self.echo}

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def requested_logprobs(self) -> int | None:
        return self.logprobs

    def requested_prompt_logprobs(self) -> int | None:
        echoed = self.logprobs if self.echo else None
        if self.prompt_logprobs is None or echoed is None:
            return self.prompt_logprobs if echoed is None else echoed
        return max(self.prompt_logprobs, echoed)


class CompletionLogprobs(BaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class PromptLogprob(BaseModel):
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    # vLLM's: per prompt position (the first has none), the token's and the top alternatives' logprobs.
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = None
    finish_reason: str | None = None
    # What stopped it: the stop string or token id; null for EOS or length (vLLM's extra).
    stop_reason: int | str | None = None
    # With return_token_ids (vLLM's): the prompt's ids (a stream's first chunk) and the choice's new ones.
    prompt_token_ids: list[int] | None = None
    token_ids: list[int] | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


# ---- chat -------------------------------------------------------------------------------------


class TextContentPart(_Request):
    type: Literal["text"]
    text: str


class ImageURL(_Request):
    url: str  # data:image/...;base64,... or http(s)://
    detail: Literal["auto", "low", "high"] | None = None


class ImageContentPart(_Request):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextContentPart | ImageContentPart, Field(discriminator="type")]


class FunctionDefinition(_Request):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema of the arguments object
    strict: bool | None = None


class ChatTool(_Request):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class FunctionName(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"] = "function"
    function: FunctionName


class FunctionCall(BaseModel):
    name: str
    arguments: str  # a JSON object, as text (OpenAI's format)


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


def _template_arguments(arguments: str) -> dict[str, Any] | str:
    """Arguments as chat templates expect them: most render a mapping with tojson,
    so a JSON object given as text is decoded; anything else stays text."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    return value if isinstance(value, dict) else arguments


class ChatMessage(_Request):
    # The model's chat template decides which of these it accepts.
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # the call a tool message answers

    def image_urls(self) -> list[str]:
        """Its images, in order."""
        parts = self.content if isinstance(self.content, list) else []
        return [part.image_url.url for part in parts if isinstance(part, ImageContentPart)]

    def to_template(self) -> dict[str, Any]:
        """The message as chat templates expect it: content flattened to one string, or with images a
        list of parts ({"type": "image"} where each image goes, which the template renders as its placeholder)."""
        content = self.content
        if isinstance(content, list) and self.image_urls():
            content = [{"type": "image"} if isinstance(part, ImageContentPart) else {"type": "text", "text": part.text}
                       for part in content]
        elif isinstance(content, list):
            content = "".join(part.text for part in content)
        message: dict[str, Any] = {"role": self.role, "content": content or ""}
        if self.name is not None:
            message["name"] = self.name
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": call.id, "type": call.type,
                 "function": {"name": call.function.name, "arguments": _template_arguments(call.function.arguments)}}
                for call in self.tool_calls
            ]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


def tool_call_schema(tools: list[ChatTool], parallel: bool) -> dict[str, Any]:
    """The JSON Schema that tool_choice "required" holds the reply to: an array of
    one or more calls, each {"name": one of the tools, "arguments": its parameters}."""
    calls = [
        {"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
         "properties": {"name": {"const": tool.function.name}, "arguments": tool.function.parameters or {"type": "object"}}}
        for tool in tools
    ]
    return {"type": "array", "minItems": 1, **({} if parallel else {"maxItems": 1}), "items": {"anyOf": calls}}


class _ChatTemplateInput(_Request):
    """What a chat template renders besides the messages (chat completions and /tokenize)."""

    add_generation_prompt: bool = True
    tools: list[ChatTool] | None = None
    chat_template_kwargs: dict[str, Any] | None = None  # extra variables for the template

    def template_kwargs(self) -> dict[str, Any]:
        """The template's variables: the client's extras, and the tools."""
        kwargs = dict(self.chat_template_kwargs or {})
        if self.tools:
            kwargs["tools"] = [tool.model_dump(exclude_none=True) for tool in self.tools]
        return kwargs


ToolMode = Literal["none", "auto", "required", "named"]


class ChatCompletionRequest(_SamplingRequest, _ChatTemplateInput):
    messages: list[ChatMessage] = Field(min_length=1)
    mm_processor_kwargs: dict[str, Any] | None = None  # vLLM's: the image processor's settings for this request
    max_tokens: int | None = None  # deprecated by OpenAI in favour of max_completion_tokens
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    # vLLM's extra: the rendered prompt's token logprobs (and this many alternatives), as `prompt_logprobs`.
    prompt_logprobs: int | None = Field(None, ge=0)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    # How long a reasoning model thinks: the chat template's `reasoning_effort` (GPT-OSS's system message
    # says it), unless chat_template_kwargs sets one.
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    # The deprecated function-calling fields are refused unless "none"
    # (silently ignoring them would answer a different question).
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None

    def template_kwargs(self) -> dict[str, Any]:
        kwargs = super().template_kwargs()
        if self.reasoning_effort is not None:
            kwargs.setdefault("reasoning_effort", self.reasoning_effort)
        return kwargs

    @property
    def tool_mode(self) -> ToolMode:
        """How the reply may call tools: not at all, as the model decides, at least once, or one named function."""
        if not self.tools or self.tool_choice == "none":
            return "none"
        if isinstance(self.tool_choice, NamedToolChoice):
            return "named"
        return self.tool_choice or "auto"  # OpenAI's default when tools are given

    def beam_search_conflicts(self) -> dict[str, bool]:
        return {**super().beam_search_conflicts(), "tools": self.tool_mode != "none"}

    def skips_special_tokens(self) -> bool:
        """Kept when the model may call tools: the tags of several formats are special tokens
        (Kimi K2's, and `<tool_call>` in some tokenizers), which the tool-call parser must see."""
        return self.skip_special_tokens and self.tool_mode != "auto"

    def check_tools(self) -> None:
        """ValueError, naming the field, for tools and tool_choice that do not fit together."""
        if self.functions and self.function_call != "none":
            raise ValueError('functions: the deprecated function calling is not served; send tools instead '
                             '(or function_call "none")')
        if self.tool_choice not in (None, "none") and not self.tools:
            raise ValueError("tool_choice needs tools to choose from")
        names = [tool.function.name for tool in self.tools or []]
        if len(set(names)) != len(names):
            raise ValueError("tools: function names must be unique")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise ValueError(f"tool_choice names function {self.tool_choice.function.name!r}, which is not in tools")
        if self.tool_mode in ("named", "required") and super().has_constraint:
            raise ValueError(f"tool_choice {self.tool_mode} fixes the reply's format; it cannot be combined with "
                             f"{super().constraint_field}")

    @property
    def has_constraint(self) -> bool:
        return self.tool_mode in ("named", "required") or super().has_constraint

    @property
    def constraint_field(self) -> str:
        return "tools" if self.tool_mode in ("named", "required") else super().constraint_field

    def requested_constraint(self) -> StructuredOutput | None:
        if self.tool_mode == "named":
            chosen = next(t for t in self.tools if t.function.name == self.tool_choice.function.name)
            return StructuredOutput(json=chosen.function.parameters or {"type": "object"})
        if self.tool_mode == "required":
            return StructuredOutput(json=tool_call_schema(self.tools, self.parallel_tool_calls))
        return super().requested_constraint()

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def requested_prompt_logprobs(self) -> int | None:
        return self.prompt_logprobs

    def requested_logprobs(self) -> int | None:
        if not self.logprobs:
            if self.top_logprobs:
                raise ValueError("top_logprobs needs logprobs set to true")
            return None
        return self.top_logprobs or 0


class ChatTopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(ChatTopLogprob):
    top_logprobs: list[ChatTopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    # With --reasoning-parser: the thinking, under vLLM's name and its older one.
    reasoning: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None  # with return_token_ids (vLLM's)


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo | None = None
    # vLLM's extra, when the request asked for prompt_logprobs: the rendered prompt's tokens.
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = None
    prompt_token_ids: list[int] | None = None  # with return_token_ids: the rendered prompt's ids


class _OmitUnset(BaseModel):
    """Written without its null fields, as OpenAI writes deltas: a streamed tool
    call names its id and function once, and clients that join deltas must not
    meet nulls."""

    @model_serializer(mode="wrap")
    def _omit_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class DeltaFunctionCall(_OmitUnset):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(_OmitUnset):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall


class ChatDelta(_OmitUnset):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatStreamChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None  # with return_token_ids: the chunk's new ones


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatStreamChoice]
    usage: UsageInfo | None = None
    prompt_token_ids: list[int] | None = None  # with return_token_ids, in a choice's first chunk


# ---- embeddings -------------------------------------------------------------------------------


class EmbeddingRequest(_Request):
    model: str | None = None
    # A string, a list of strings, token ids, or a list of token-id lists.
    input: Union[str, list[str], list[int], list[list[int]]]
    encoding_format: Literal["float", "base64"] = "float"  # base64: little-endian float32
    dimensions: int | None = Field(None, ge=1)  # keep the first dimensions, then renormalize
    user: str | None = None
    truncate_prompt_tokens: int | None = Field(None, ge=-1)  # keep the input's last N tokens (-1: the context)


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: UsageInfo


# ---- classify, score, rerank (vLLM's pooling endpoints) ---------------------------------------


class ClassifyRequest(_Request):
    model: str | None = None
    input: Union[str, list[str], list[int], list[list[int]]]
    user: str | None = None
    truncate_prompt_tokens: int | None = Field(None, ge=-1)


class ClassifyData(BaseModel):
    index: int
    label: str
    probs: list[float]
    num_classes: int


class _PoolingList(BaseModel):
    """What the classify and score responses share around their data."""

    id: str
    object: Literal["list"] = "list"
    created: int = Field(default_factory=_now)
    model: str
    usage: UsageInfo


class ClassifyResponse(_PoolingList):
    data: list[ClassifyData]


class ScoreRequest(_Request):
    model: str | None = None
    # One text against each of a list, or two lists of equal length, pair by pair.
    text_1: Union[str, list[str]]
    text_2: Union[str, list[str]]
    user: str | None = None
    truncate_prompt_tokens: int | None = Field(None, ge=-1)


class ScoreData(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(_PoolingList):
    data: list[ScoreData]


class RerankRequest(_Request):
    """Jina's and Cohere's rerank API, as vLLM serves it."""

    model: str | None = None
    query: str
    documents: list[str]
    top_n: int | None = Field(None, ge=0)  # the best top_n results (0 or unset: all)
    return_documents: bool = True
    truncate_prompt_tokens: int | None = Field(None, ge=-1)


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    document: RerankDocument | None = None
    relevance_score: float


class RerankUsage(BaseModel):
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    usage: RerankUsage
    results: list[RerankResult]


# ---- models, tokenizer, version -----------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "pagoda"
    max_model_len: int | None = None
    root: str | None = None  # where it was loaded from
    parent: str | None = None  # a LoRA adapter's base model


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeRequest(_ChatTemplateInput):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


class LoadLoRAAdapterRequest(_Request):
    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)


class UnloadLoRAAdapterRequest(_Request):
    lora_name: str = Field(min_length=1)


class VersionResponse(BaseModel):
    version: str
