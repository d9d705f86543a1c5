"""POST /v1/completions: prompts in any of OpenAI's four shapes, one engine request each."""

from __future__ import annotations

import time

from fastapi import Request
from fastapi.responses import Response

from pagoda.engine.entrypoints.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)
from pagoda.engine.entrypoints.serving_engine import ChoiceState, OpenAIServing, RequestContext
from pagoda.engine.outputs import CompletionOutput, Logprob, RequestOutput


def completion_logprobs(
    entries: list[dict[int, Logprob]], token_ids: list[int], text_offset: int
) -> tuple[CompletionLogprobs, int]:
    """The legacy logprobs object for these tokens, and the text offset after them."""
    result = CompletionLogprobs()
    for entry, token_id in zip(entries, token_ids):
        chosen = entry[token_id]
        token = chosen.decoded_token or ""
        result.tokens.append(token)
        result.token_logprobs.append(chosen.logprob)
        top: dict[str, float] = {}
        for lp in entry.values():  # best first; byte tokens may share a string, keep the likelier
            top.setdefault(lp.decoded_token or "", lp.logprob)
        result.top_logprobs.append(top)
        result.text_offset.append(text_offset)
        text_offset += len(token)
    return result, text_offset


class OpenAIServingCompletion(OpenAIServing):
    endpoint = "completions"
    id_prefix = "cmpl"

    async def create_completion(self, request: CompletionRequest, raw_request: Request) -> Response:
        arrival = time.monotonic()
        lora = self.check_model(request.model)
        prompts = await self.prompts_of(request.prompt, "prompt")
        return await self.generate(raw_request, request, prompts, arrival, "prompt", lora)

    def _choice(self, ctx: RequestContext, prompt_index: int, c: CompletionOutput, text: str,
                logprobs: CompletionLogprobs | None) -> CompletionChoice:
        return CompletionChoice(index=ctx.choice_index(prompt_index, c.index), text=text, logprobs=logprobs,
                                finish_reason=c.finish_reason, stop_reason=c.stop_reason)

    def full_response(self, ctx: RequestContext, outputs: list[RequestOutput]) -> CompletionResponse:
        choices = []
        for prompt_index, out in enumerate(outputs):
            for c in out.outputs:
                logprobs = None if c.logprobs is None else completion_logprobs(c.logprobs, c.token_ids, 0)[0]
                choices.append(self._choice(ctx, prompt_index, c, c.text, logprobs))
        return CompletionResponse(id=ctx.request_id, created=ctx.created, model=ctx.model, choices=choices,
                                  usage=ctx.usage())

    def stream_chunks(
        self, ctx: RequestContext, prompt_index: int, output: RequestOutput, state: dict[int, ChoiceState],
    ) -> list[CompletionResponse]:
        chunks = []
        for c in output.outputs:
            st = state.setdefault(ctx.choice_index(prompt_index, c.index), ChoiceState())
            if st.finished:
                continue
            logprobs = None
            if c.logprobs is not None:
                # Outputs carry every token so far: send only the ones this stream has not.
                new = c.logprobs[st.logprobs_sent:]
                logprobs, st.text_offset = completion_logprobs(new, c.token_ids[st.logprobs_sent:], st.text_offset)
                st.logprobs_sent += len(new)
            st.finished = c.finish_reason is not None
            if c.delta_text or st.finished or (logprobs is not None and logprobs.tokens):
                chunks.append(CompletionResponse(id=ctx.request_id, created=ctx.created, model=ctx.model,
                                                 choices=[self._choice(ctx, prompt_index, c, c.delta_text, logprobs)]))
        return chunks

    def usage_chunk(self, ctx: RequestContext) -> CompletionResponse:
        return CompletionResponse(id=ctx.request_id, created=ctx.created, model=ctx.model, choices=[],
                                  usage=ctx.usage())
