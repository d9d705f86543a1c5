"""POST /v1/completions: prompts in any of OpenAI's four shapes, one engine request each."""

from __future__ import annotations

import time
import uuid

from fastapi import Request
from fastapi.responses import Response

from pagoda.engine.entrypoints.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)
from pagoda.engine.entrypoints.serving_engine import (
    CLIENT_CLOSED_REQUEST,
    ChoiceState,
    OpenAIServing,
    Prompt,
    RequestContext,
    bad_request,
    beam_usage,
    new_token_ids,
    vllm_prompt_logprobs,
)
from pagoda.engine.lora import LoRARequest
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


def _merge(first: CompletionLogprobs, second: CompletionLogprobs) -> CompletionLogprobs:
    return CompletionLogprobs(text_offset=first.text_offset + second.text_offset,
                              token_logprobs=first.token_logprobs + second.token_logprobs,
                              tokens=first.tokens + second.tokens, top_logprobs=first.top_logprobs + second.top_logprobs)


class OpenAIServingCompletion(OpenAIServing):
    endpoint = "completions"
    id_prefix = "cmpl"

    async def create_completion(self, request: CompletionRequest, raw_request: Request) -> Response:
        arrival = time.monotonic()
        lora = self.check_model(request.model)
        try:
            request.check_unserved()
            request.check_beam_search()
        except ValueError as exc:
            raise bad_request(exc, request) from None
        prompts = await self.prompts_of(request.prompt, "prompt")
        if request.use_beam_search:
            return await self.beam_search_response(raw_request, request, prompts, lora)
        return await self.generate(raw_request, request, prompts, arrival, "prompt", lora)

    async def beam_search_response(self, raw_request: Request, request: CompletionRequest, prompts: list[Prompt],
                                   lora: LoRARequest | None) -> Response:
        """vLLM's use_beam_search: the n best beams of each prompt as its n choices."""
        results = await self.beam_search(raw_request, request, prompts, lora, "prompt")
        if results is None:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        choices = [CompletionChoice(index=prompt_index * request.n + beam.index, text=beam.text,
                                    finish_reason=beam.finish_reason)
                   for prompt_index, beams in enumerate(results) for beam in beams]
        body = CompletionResponse(id=f"{self.id_prefix}-{uuid.uuid4().hex}", model=self.model_name(lora),
                                  choices=choices, usage=beam_usage(prompts, results))
        return Response(body.model_dump_json(), media_type="application/json")

    def _choice(self, ctx: RequestContext, prompt_index: int, c: CompletionOutput, text: str,
                logprobs: CompletionLogprobs | None, prompt_logprobs: list | None = None,
                token_ids: tuple[list[int] | None, list[int] | None] = (None, None)) -> CompletionChoice:
        """`token_ids`: (the prompt's, the choice's new) ids, with return_token_ids."""
        return CompletionChoice(index=ctx.choice_index(prompt_index, c.index), text=text, logprobs=logprobs,
                                finish_reason=c.finish_reason, stop_reason=c.stop_reason,
                                prompt_logprobs=prompt_logprobs, prompt_token_ids=token_ids[0], token_ids=token_ids[1])

    def _echo(self, ctx: RequestContext, prompt_index: int, out: RequestOutput) -> tuple[str, CompletionLogprobs | None]:
        """What echo puts in front of a choice: the prompt's text and, with logprobs, its tokens
        (the first has no logprob: nothing precedes it)."""
        prompt = ctx.prompts[prompt_index]
        text = prompt.text if prompt.text is not None else self.tokenizer.decode(prompt.token_ids)
        if ctx.request.logprobs is None or out.prompt_logprobs is None:
            return text, None
        first = self.tokenizer.batch_decode([[prompt.token_ids[0]]])[0]
        head = CompletionLogprobs(text_offset=[0], token_logprobs=[None], tokens=[first], top_logprobs=[None])
        rest, _ = completion_logprobs(out.prompt_logprobs[1:], prompt.token_ids[1:], len(first))
        return text, _merge(head, rest)

    def _prompt_parts(
        self, ctx: RequestContext, prompt_index: int, out: RequestOutput,
    ) -> tuple[str, CompletionLogprobs | None, list | None]:
        """(echoed text, echoed logprobs, vLLM's prompt_logprobs) of a choice's first chunk or whole body."""
        text, logprobs = self._echo(ctx, prompt_index, out) if ctx.request.echo else ("", None)
        wanted = ctx.request.prompt_logprobs is not None and out.prompt_logprobs is not None
        return text, logprobs, vllm_prompt_logprobs(out.prompt_logprobs) if wanted else None

    def full_response(self, ctx: RequestContext, outputs: list[RequestOutput]) -> CompletionResponse:
        choices = []
        for prompt_index, out in enumerate(outputs):
            echoed, echoed_logprobs, prompt_logprobs = self._prompt_parts(ctx, prompt_index, out)
            offset = echoed_logprobs.text_offset[-1] + len(echoed_logprobs.tokens[-1]) if echoed_logprobs else 0
            for c in out.outputs:
                logprobs = None if c.logprobs is None else completion_logprobs(c.logprobs, c.token_ids, offset)[0]
                if echoed_logprobs is not None and logprobs is not None:
                    logprobs = _merge(echoed_logprobs, logprobs)
                ids = (ctx.prompts[prompt_index].token_ids, list(c.token_ids)) if ctx.request.return_token_ids else (None, None)
                choices.append(self._choice(ctx, prompt_index, c, echoed + c.text, logprobs, prompt_logprobs, ids))
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
            echoed, echoed_logprobs, prompt_logprobs, prompt_ids = "", None, None, None
            if not st.started:  # the first chunk of a choice carries what precedes its text
                st.started = True
                echoed, echoed_logprobs, prompt_logprobs = self._prompt_parts(ctx, prompt_index, output)
                if ctx.request.return_token_ids:
                    prompt_ids = ctx.prompts[prompt_index].token_ids
                if echoed_logprobs is not None:
                    st.text_offset = echoed_logprobs.text_offset[-1] + len(echoed_logprobs.tokens[-1])
            logprobs = None
            if c.logprobs is not None:
                # Outputs carry every token so far: send only the ones this stream has not.
                new = c.logprobs[st.logprobs_sent:]
                logprobs, st.text_offset = completion_logprobs(new, c.token_ids[st.logprobs_sent:], st.text_offset)
                st.logprobs_sent += len(new)
                if echoed_logprobs is not None:
                    logprobs = _merge(echoed_logprobs, logprobs)
            st.finished = c.finish_reason is not None
            text = echoed + c.delta_text
            if (text or st.finished or (logprobs is not None and logprobs.tokens) or prompt_logprobs is not None
                    or prompt_ids is not None):
                ids = (prompt_ids, new_token_ids(ctx.request, st, c))
                chunks.append(CompletionResponse(id=ctx.request_id, created=ctx.created, model=ctx.model,
                                                 choices=[self._choice(ctx, prompt_index, c, text, logprobs,
                                                                       prompt_logprobs, ids)]))
        return chunks

    def usage_chunk(self, ctx: RequestContext) -> CompletionResponse:
        return CompletionResponse(id=ctx.request_id, created=ctx.created, model=ctx.model, choices=[],
                                  usage=ctx.usage())
