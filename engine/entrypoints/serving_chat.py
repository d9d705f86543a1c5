"""POST /v1/chat/completions: the conversation rendered by the tokenizer's chat template."""

from __future__ import annotations

import time

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
)
from pagoda.engine.entrypoints.serving_engine import (
    ChoiceState,
    OpenAIServing,
    Prompt,
    RequestContext,
    bad_request,
)
from pagoda.engine.outputs import Logprob, RequestOutput


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


class OpenAIServingChat(OpenAIServing):
    endpoint = "chat.completions"
    id_prefix = "chatcmpl"

    async def create_chat_completion(self, request: ChatCompletionRequest, raw_request: Request) -> Response:
        arrival = time.monotonic()
        self.check_model(request.model)
        messages = [m.to_template() for m in request.messages]
        try:
            token_ids = await self.render_chat(messages, request.add_generation_prompt)
        except ValueError as exc:
            raise bad_request(exc, request, "messages") from None
        return await self.generate(raw_request, request, [Prompt(token_ids)], arrival, "messages")

    def _logprobs(self, request: ChatCompletionRequest, entries: list[dict[int, Logprob]],
                  token_ids: list[int]) -> ChatLogprobs:
        return chat_logprobs(entries, token_ids, request.top_logprobs or 0)

    def full_response(self, ctx: RequestContext, outputs: list[RequestOutput]) -> ChatCompletionResponse:
        choices = []
        for c in outputs[0].outputs:
            logprobs = None if c.logprobs is None else self._logprobs(ctx.request, c.logprobs, c.token_ids)
            choices.append(ChatCompletionChoice(
                index=c.index, message=ChatResponseMessage(content=c.text), logprobs=logprobs,
                finish_reason=c.finish_reason, stop_reason=c.stop_reason,
            ))
        return ChatCompletionResponse(id=ctx.request_id, created=ctx.created, model=ctx.model, choices=choices,
                                      usage=ctx.usage())

    def _chunk(self, ctx: RequestContext, choice: ChatStreamChoice) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=ctx.request_id, created=ctx.created, model=ctx.model, choices=[choice])

    def stream_chunks(
        self, ctx: RequestContext, prompt_index: int, output: RequestOutput, state: dict[int, ChoiceState],
    ) -> list[ChatCompletionChunk]:
        chunks = []
        for c in output.outputs:
            st = state.setdefault(c.index, ChoiceState())
            if st.finished:
                continue
            if not st.started:  # OpenAI opens every choice with the role and empty content
                st.started = True
                chunks.append(self._chunk(ctx, ChatStreamChoice(index=c.index,
                                                                delta=ChatDelta(role="assistant", content=""))))
            logprobs = None
            if c.logprobs is not None:
                new = c.logprobs[st.logprobs_sent:]
                logprobs = self._logprobs(ctx.request, new, c.token_ids[st.logprobs_sent:])
                st.logprobs_sent += len(new)
            st.finished = c.finish_reason is not None
            if c.delta_text or st.finished or (logprobs is not None and logprobs.content):
                chunks.append(self._chunk(ctx, ChatStreamChoice(
                    index=c.index, delta=ChatDelta(content=c.delta_text or None), logprobs=logprobs,
                    finish_reason=c.finish_reason, stop_reason=c.stop_reason,
                )))
        return chunks

    def usage_chunk(self, ctx: RequestContext) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=ctx.request_id, created=ctx.created, model=ctx.model, choices=[],
                                   usage=ctx.usage())
