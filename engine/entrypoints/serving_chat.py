"""POST /v1/chat/completions: the conversation rendered by the tokenizer's chat template.

With tools, the reply is read by a tool-call parser: for tool_choice naming a
function or "required" the server itself constrained the reply's format; for
"auto" the parser matches the format the chat template taught the model. With
--reasoning-parser, the thinking before the answer is returned apart.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from pagoda.engine.entrypoints.protocol import (
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    ChatResponseMessage,
    ChatStreamChoice,
    ChatTokenLogprob,
    ChatTopLogprob,
    DeltaFunctionCall,
    DeltaToolCall,
    FunctionCall,
    ToolCall,
)
from pagoda.engine.async_engine import AsyncLLMEngine
from pagoda.engine.entrypoints.serving_engine import (
    CLIENT_CLOSED_REQUEST,
    APIError,
    ChoiceState,
    OpenAIServing,
    Prompt,
    ReplyReader,
    RequestContext,
    bad_request,
    beam_usage,
    new_token_ids,
    vllm_prompt_logprobs,
)
from pagoda.engine.entrypoints import harmony
from pagoda.engine.entrypoints.harmony import HarmonyParser
from pagoda.engine.entrypoints.reply import (
    ReplyParser,
    ThinkParser,
    prompt_closes_reasoning,
    prompt_opens_reasoning,
    think_tokens,
)
from pagoda.engine.entrypoints.tool_parsers import (
    AUTO_PARSERS,
    CallPiece,
    JsonArrayParser,
    NamedCallParser,
    ToolCallParser,
)
from pagoda.engine.lora import LoRARequest
from pagoda.engine.outputs import CompletionOutput, Logprob, RequestOutput
from pagoda.engine.structured_output import Thinking


def _top(lp: Logprob) -> ChatTopLogprob:
    token = lp.decoded_token or ""
    return ChatTopLogprob(token=token, logprob=lp.logprob, bytes=list(token.encode("utf-8", "replace")))


def chat_logprobs(entries: list[dict[int, Logprob]], token_ids: list[int], num_top: int) -> ChatLogprobs:
    content = []
    for entry, token_id in zip(entries, token_ids):
        chosen = _top(entry[token_id])
        ranked = sorted((lp for lp in entry.values() if lp.rank is not None), key=lambda lp: lp.rank)
        content.append(ChatTokenLogprob(**chosen.model_dump(), top_logprobs=[_top(lp) for lp in ranked[:num_top]]))
    return ChatLogprobs(content=content)


def _finish_reason(request: ChatCompletionRequest, output: CompletionOutput, made_calls: bool) -> str | None:
    """OpenAI's: "tool_calls" when the model chose to call (auto or required),
    "stop" when the request named the function."""
    if made_calls and output.finish_reason == "stop" and request.tool_mode in ("auto", "required"):
        return "tool_calls"
    return output.finish_reason


def _tool_calls(pieces: list[CallPiece], new_id: Callable[[], str]) -> list[ToolCall]:
    calls: dict[int, ToolCall] = {}
    for piece in pieces:
        if piece.index not in calls:
            calls[piece.index] = ToolCall(id=piece.call_id or new_id(),
                                          function=FunctionCall(name=piece.name or "", arguments=""))
        calls[piece.index].function.arguments += piece.arguments
    return list(calls.values())


class OpenAIServingChat(OpenAIServing):
    endpoint = "chat.completions"
    id_prefix = "chatcmpl"

    def __init__(
        self, engine: AsyncLLMEngine, tokenizer: Any, served_model_name: str, tokenizer_pool: ThreadPoolExecutor,
        tool_parser: str | None = None, reasoning_parser: str | None = None,
    ) -> None:
        super().__init__(engine, tokenizer, served_model_name, tokenizer_pool)
        self.tool_parser = tool_parser  # the format of tool_choice "auto" calls; None: auto is refused
        self.reasoning_parser = reasoning_parser  # None: thinking stays in the content
        # GPT-OSS's harmony format: one reader for reasoning, content and calls, which reads special tokens.
        self.harmony = tool_parser == harmony.TOOL_PARSER or reasoning_parser == harmony.REASONING_PARSER
        # With a reasoning parser, constraints wait for the end of the thinking (when its tags are tokens).
        self.think_tokens = think_tokens(tokenizer.get_vocab()) if reasoning_parser is not None else None

    async def create_chat_completion(self, request: ChatCompletionRequest, raw_request: Request) -> Response:
        arrival = time.monotonic()
        lora = self.check_model(request.model)
        try:
            request.check_tools()
            request.check_beam_search()
        except ValueError as exc:
            raise bad_request(exc, request, "tools") from None
        if request.tool_mode == "auto" and self.tool_parser is None:
            raise APIError(400, 'tool_choice "auto" needs a tool-call format, and this model\'s chat template teaches '
                                'none that the server knows: start it with --tool-call-parser, or send tool_choice '
                                '"required", "none" or a named function', param="tool_choice")
        if self.harmony:
            request.skip_special_tokens = False
        messages = [m.to_template() for m in request.messages]
        urls = [url for m in request.messages for url in m.image_urls()]
        if urls and request.use_beam_search:
            raise APIError(400, "beam search with images is not supported", param="use_beam_search")
        try:
            token_ids = await self.render_chat(messages, request.add_generation_prompt, request.template_kwargs())
            prompt = await self.with_images(token_ids, urls, request.mm_processor_kwargs)
        except ValueError as exc:
            raise bad_request(exc, request, "messages") from None
        in_reasoning, thinking = False, None
        if self.reasoning_parser is not None:
            tail = await self.run_tokenizer(self.tokenizer.decode, token_ids[-8:])
            in_reasoning = prompt_opens_reasoning(tail)
            if self.think_tokens is not None:
                state = "inside" if in_reasoning else "done" if prompt_closes_reasoning(tail) else "may_open"
                thinking = Thinking(*self.think_tokens, state)

        def new_choice() -> ChoiceState:
            return ChoiceState(reply=self._new_reply(request, in_reasoning))

        if request.use_beam_search:
            return await self._beam_search_response(raw_request, request, Prompt(token_ids), lora,
                                                    lambda: self._new_reply(request, in_reasoning))

        return await self.generate(raw_request, request, [prompt], arrival, "messages", lora, new_choice, thinking)

    async def _beam_search_response(self, raw_request: Request, request: ChatCompletionRequest, prompt: Prompt,
                                    lora: LoRARequest | None,
                                    new_reply: Callable[[], ReplyReader | None]) -> Response:
        """vLLM's use_beam_search: the n best beams as the n choices (a reasoning model's
        thinking apart, as in any reply)."""
        results = await self.beam_search(raw_request, request, [prompt], lora, "messages")
        if results is None:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        choices = []
        for beam in results[0]:
            message, finish_reason = self._message(request, new_reply(), beam)
            choices.append(ChatCompletionChoice(index=beam.index, message=message, finish_reason=finish_reason))
        body = ChatCompletionResponse(id=f"{self.id_prefix}-{uuid.uuid4().hex}", model=self.model_name(lora),
                                      choices=choices, usage=beam_usage([prompt], results))
        return Response(body.model_dump_json(), media_type="application/json")

    def _new_reply(self, request: ChatCompletionRequest, in_reasoning: bool) -> ReplyReader | None:
        """The reader of one choice's reply; None when the text is all content."""
        if self.harmony and request.tool_mode not in ("named", "required"):  # those force bare JSON
            schemas = {tool.function.name: tool.function.parameters or {} for tool in request.tools or ()}
            return HarmonyParser(max_calls=None if request.parallel_tool_calls else 1, schemas=schemas)
        tools = self._new_tool_parser(request)
        if tools is None and self.reasoning_parser is None:
            return None
        return ReplyParser(ThinkParser(in_reasoning) if self.reasoning_parser is not None else None, tools)

    def _new_tool_parser(self, request: ChatCompletionRequest) -> ToolCallParser | None:
        mode = request.tool_mode
        if mode == "named":
            return NamedCallParser(request.tool_choice.function.name)
        if mode == "required":
            return JsonArrayParser()
        if mode == "auto":
            schemas = {tool.function.name: tool.function.parameters or {} for tool in request.tools or ()}
            return AUTO_PARSERS[self.tool_parser](max_calls=None if request.parallel_tool_calls else 1, schemas=schemas)
        return None

    def _logprobs(self, request: ChatCompletionRequest, entries: list[dict[int, Logprob]],
                  token_ids: list[int]) -> ChatLogprobs:
        return chat_logprobs(entries, token_ids, request.top_logprobs or 0)

    @staticmethod
    def _message(request: ChatCompletionRequest, reply: ReplyReader | None,
                 c: CompletionOutput) -> tuple[ChatResponseMessage, str | None]:
        if reply is None:
            return ChatResponseMessage(content=c.text), c.finish_reason
        piece = reply.parse(c.text)
        calls = _tool_calls(piece.calls, reply.new_call_id)
        content = piece.content if piece.content.strip() or not calls else None
        reasoning = piece.reasoning or None
        return (ChatResponseMessage(content=content, reasoning=reasoning, reasoning_content=reasoning,
                                    tool_calls=calls or None),
                _finish_reason(request, c, bool(calls)))

    def full_response(self, ctx: RequestContext, outputs: list[RequestOutput]) -> ChatCompletionResponse:
        choices = []
        for c in outputs[0].outputs:
            logprobs = None if c.logprobs is None else self._logprobs(ctx.request, c.logprobs, c.token_ids)
            message, finish_reason = self._message(ctx.request, ctx.new_choice().reply, c)
            choices.append(ChatCompletionChoice(
                index=c.index, message=message, logprobs=logprobs, finish_reason=finish_reason,
                stop_reason=c.stop_reason, token_ids=list(c.token_ids) if ctx.request.return_token_ids else None,
            ))
        prompt_logprobs = outputs[0].prompt_logprobs if ctx.request.prompt_logprobs is not None else None
        return ChatCompletionResponse(id=ctx.request_id, created=ctx.created, model=ctx.model, choices=choices,
                                      usage=ctx.usage(),
                                      prompt_logprobs=vllm_prompt_logprobs(prompt_logprobs) if prompt_logprobs else None,
                                      prompt_token_ids=ctx.prompts[0].token_ids if ctx.request.return_token_ids else None)

    def _chunk(self, ctx: RequestContext, choice: ChatStreamChoice) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=ctx.request_id, created=ctx.created, model=ctx.model, choices=[choice])

    @staticmethod
    def _delta(st: ChoiceState, c: CompletionOutput, finished: bool) -> ChatDelta:
        """This output's new text as reasoning, content and tool-call deltas."""
        if st.reply is None:
            return ChatDelta(content=c.delta_text or None)
        piece = st.reply.feed(c.delta_text, final=finished)
        calls = [
            DeltaToolCall(index=p.index, id=(p.call_id or st.reply.new_call_id()) if p.name is not None else None,
                          type="function" if p.name is not None else None,
                          function=DeltaFunctionCall(name=p.name, arguments=p.arguments))
            for p in piece.calls
        ]
        reasoning = piece.reasoning or None
        return ChatDelta(content=piece.content or None, reasoning=reasoning, reasoning_content=reasoning,
                         tool_calls=calls or None)

    def stream_chunks(
        self, ctx: RequestContext, prompt_index: int, output: RequestOutput, state: dict[int, ChoiceState],
    ) -> list[ChatCompletionChunk]:
        chunks = []
        for c in output.outputs:
            st = state.get(c.index)
            if st is None:
                st = state[c.index] = ctx.new_choice()
            if st.finished:
                continue
            if not st.started:  # OpenAI opens every choice with the role and empty content
                st.started = True
                opening = self._chunk(ctx, ChatStreamChoice(index=c.index, delta=ChatDelta(role="assistant", content="")))
                if ctx.request.return_token_ids:
                    opening.prompt_token_ids = ctx.prompts[0].token_ids
                chunks.append(opening)
            logprobs = None
            if c.logprobs is not None:
                new = c.logprobs[st.logprobs_sent:]
                logprobs = self._logprobs(ctx.request, new, c.token_ids[st.logprobs_sent:])
                st.logprobs_sent += len(new)
            st.finished = c.finish_reason is not None
            delta = self._delta(st, c, st.finished)
            if (delta.content or delta.reasoning or delta.tool_calls or st.finished
                    or (logprobs is not None and logprobs.content)):
                made_calls = st.reply is not None and st.reply.num_calls > 0
                finish_reason = _finish_reason(ctx.request, c, made_calls) if st.finished else None
                chunks.append(self._chunk(ctx, ChatStreamChoice(
                    index=c.index, delta=delta, logprobs=logprobs, finish_reason=finish_reason,
                    stop_reason=c.stop_reason, token_ids=new_token_ids(ctx.request, st, c),
                )))
        return chunks

    def usage_chunk(self, ctx: RequestContext) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=ctx.request_id, created=ctx.created, model=ctx.model, choices=[],
                                   usage=ctx.usage())
