"""What completions and chat share: validation, admission, streaming, disconnects, logs.

A request is fully checked here before the engine hears of it: the model
name, the prompt (tokenized off the event loop), the sampling values, the
context length and the queue's room. The endpoint subclasses only say how
prompts are made and how outputs look on the wire.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from pagoda.engine.async_engine import AsyncLLMEngine, EngineDeadError, EngineRequest, OutputStream, QueueFullError
from pagoda.engine.entrypoints.protocol import (
    ErrorInfo,
    ErrorResponse,
    PromptLogprob,
    PromptTokensDetails,
    UsageInfo,
    _SamplingRequest,
)
from pagoda.engine.entrypoints.harmony import HarmonyParser
from pagoda.engine.entrypoints.reply import ReplyParser
from pagoda.engine.lora import LoRARequest
from pagoda.engine.multimodal import ImageInputs, load_image
from pagoda.engine.beam_search import Beam, BeamSearch, BeamSearchParams
from pagoda.engine.outputs import CompletionOutput, Logprob, RequestOutput
from pagoda.engine.sampling_params import SamplingParams
from pagoda.engine.structured_output import InvalidConstraint, Thinking
from pagoda.engine.tokenizer import apply_chat_template

logger = logging.getLogger("pagoda.requests")

T = TypeVar("T")

RETRY_AFTER_S = 1
"""What a 503 for a full queue tells clients to wait; a step frees room within milliseconds to seconds."""

# Status of a request whose client went away; never seen by that client (nginx's convention).
CLIENT_CLOSED_REQUEST = 499


class APIError(Exception):
    """An error answered in OpenAI's format: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
        code: str | None = None, headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorResponse(error=ErrorInfo(message=message, type=type, param=param, code=code))
        self.headers = headers

    def response(self) -> Response:
        # ASCII-escaped: a message may quote client input, lone surrogates included.
        return Response(json.dumps(self.body.model_dump()), status_code=self.status, headers=self.headers,
                        media_type="application/json")


def bad_request(exc: ValueError, request: BaseModel | None = None, default_param: str | None = None) -> APIError:
    """A 400 for a ValueError; its message starts with the offending field's name when there is one."""
    message = str(exc)
    match = re.match(r"(\w+)", message)
    fields = type(request).model_fields if request is not None else {}
    param = match.group(1) if match and match.group(1) in fields else default_param
    return APIError(400, message, param=param)


def _no_stop_iteration(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)`, with a StopIteration turned into a RuntimeError: asyncio cannot carry one out of an
    executor, and the request awaiting it would never be answered."""
    try:
        return fn(*args)
    except StopIteration as exc:
        raise RuntimeError(f"{getattr(fn, '__name__', 'tokenizer work')} raised StopIteration") from exc


def beam_usage(prompts: list[Prompt], results: list[list[CompletionOutput]]) -> UsageInfo:
    """Token counts of a beam search's answer: its prompts, and every beam it returns."""
    prompt_tokens = sum(len(p.token_ids) for p in prompts)
    generated = sum(len(beam.token_ids) for beams in results for beam in beams)
    return UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=generated, total_tokens=prompt_tokens + generated)


def vllm_prompt_logprobs(entries: list[dict[int, Logprob] | None]) -> list[dict[str, PromptLogprob] | None]:
    """vLLM's `prompt_logprobs`: per position, token id -> logprob, rank and text (None at position 0)."""
    return [None if entry is None else
            {str(tid): PromptLogprob(logprob=lp.logprob, rank=lp.rank, decoded_token=lp.decoded_token)
             for tid, lp in entry.items()}
            for entry in entries]


def sse(payload: BaseModel | str) -> str:
    """One server-sent event; Responses API events also name their type on an `event:` line."""
    data = payload if isinstance(payload, str) else payload.model_dump_json()
    kind = getattr(payload, "type", None)
    event = f"event: {kind}\n" if isinstance(kind, str) and kind.startswith("response.") else ""
    return f"{event}data: {data}\n\n"


async def until_disconnect(request: Request, work: Awaitable[T]) -> T | None:
    """Runs `work` unless the client disconnects first (then it is cancelled and None returned)."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if not task.done() or task.cancelled():  # cancelled just now: it ends at the loop's next turn
        return None
    return task.result()


@dataclass
class Prompt:
    token_ids: list[int]
    text: str | None = None
    images: ImageInputs | None = None  # with its image placeholders expanded in token_ids

    def last(self, count: int) -> Prompt:
        """Its last `count` tokens (the text no longer matches them, so it goes); ValueError where that
        would cut into its images."""
        if len(self.token_ids) <= count:
            return self
        if self.images is not None:
            raise ValueError("a prompt with images cannot be truncated")
        return Prompt(self.token_ids[-count:])


# What reads one chat choice's reply: reasoning, content and tool calls.
ReplyReader = ReplyParser | HarmonyParser


@dataclass
class ChoiceState:
    """What a stream has already sent of one choice."""

    logprobs_sent: int = 0
    tokens_sent: int = 0  # token ids sent (return_token_ids)
    text_offset: int = 0
    started: bool = False
    finished: bool = False
    reply: ReplyReader | None = None  # chat with tools or reasoning: the reply's reading so far


def new_token_ids(request: _SamplingRequest, st: ChoiceState, c: CompletionOutput) -> list[int] | None:
    """With return_token_ids, the choice's token ids a stream has not sent yet (recorded as sent)."""
    if not request.return_token_ids:
        return None
    new, st.tokens_sent = list(c.token_ids[st.tokens_sent:]), len(c.token_ids)
    return new


@dataclass
class RequestContext:
    """One HTTP request while it runs: its engine requests and what they produced so far."""

    request_id: str
    endpoint: str
    model: str
    request: _SamplingRequest
    prompts: list[Prompt]
    arrival: float
    created: int = field(default_factory=lambda: int(time.time()))
    stream: OutputStream | None = None
    last: dict[int, RequestOutput] = field(default_factory=dict)
    status: str = "aborted"
    new_choice: Callable[[], ChoiceState] = ChoiceState  # each choice's state, as the endpoint sets it up
    lora_request: LoRARequest | None = None  # the adapter the request named as its model
    thinking: Thinking | None = None  # a reasoning model's thinking, which a constraint waits out

    def usage(self) -> UsageInfo:
        prompt = sum(len(p.token_ids) for p in self.prompts)
        completion = sum(len(c.token_ids) for out in self.last.values() for c in out.outputs)
        cached = sum(out.num_cached_tokens for out in self.last.values())
        return UsageInfo(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                         prompt_tokens_details=PromptTokensDetails(cached_tokens=cached))

    def choice_index(self, prompt_index: int, completion_index: int) -> int:
        return prompt_index * self.request.n + completion_index

    def log(self) -> None:
        """One structured line per request; never the prompt or the completion text."""
        usage = self.usage()
        first = [o.metrics.first_token_time for o in self.last.values() if o.metrics and o.metrics.first_token_time]
        record = {
            "event": "request", "request_id": self.request_id, "endpoint": self.endpoint,
            "status": self.status, "stream": self.request.stream, "n": self.request.n,
            "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "finish_reasons": sorted({c.finish_reason for o in self.last.values() for c in o.outputs
                                      if c.finish_reason}),
            "ttft_s": round(min(first) - self.arrival, 6) if first else None,
            "latency_s": round(time.monotonic() - self.arrival, 6),
        }
        logger.info(json.dumps(record))


class OpenAIServing:
    """Base of the generation endpoints; subclasses format outputs."""

    endpoint = ""
    id_prefix = ""

    def __init__(
        self, engine: AsyncLLMEngine, tokenizer: Any, served_model_name: str, tokenizer_pool: ThreadPoolExecutor,
    ) -> None:
        self.engine = engine
        self.allowed_media_domains: tuple[str, ...] = ()  # hosts image URLs may name (empty: any)
        # The front's own tokenizer: the engine thread detokenizes with the
        # engine's, and HF tokenizers must not be shared across threads.
        self.tokenizer = tokenizer
        self.served_model_name = served_model_name
        self.tokenizer_pool = tokenizer_pool
        self.max_model_len = engine.engine.max_model_len

    # ---- checks -------------------------------------------------------------------------------

    def check_model(self, model: str | None) -> LoRARequest | None:
        """The LoRA adapter a request's model names (None: the base model); 404 for an unknown name."""
        if model is None or model == self.served_model_name:
            return None
        adapter = self.engine.engine.loras.get(model)
        if adapter is None:
            raise APIError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")
        return LoRARequest(adapter.name, adapter.path)

    async def run_tokenizer(self, fn: Callable[..., T], *args: Any) -> T:
        """Runs tokenizer work on its single thread: off the event loop, never concurrent."""
        return await asyncio.get_running_loop().run_in_executor(self.tokenizer_pool, _no_stop_iteration, fn, *args)

    async def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        # JSON can carry lone surrogates, which the tokenizer refuses with a TypeError.
        text.encode("utf-8")  # UnicodeEncodeError, a ValueError: a 400
        return await self.run_tokenizer(lambda: self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    async def prompts_of(self, prompt: str | list[str] | list[int] | list[list[int]], field: str) -> list[Prompt]:
        """The prompts of a request field that holds text, token ids, or a list of either (tokenized off the loop)."""
        if isinstance(prompt, str):
            items: list[str | list[int]] = [prompt]
        elif not prompt:
            raise APIError(400, f"{field} must not be empty", param=field)
        elif all(isinstance(x, int) for x in prompt):
            items = [prompt]
        else:
            items = list(prompt)
        try:
            return [Prompt(await self.encode(item), item) if isinstance(item, str) else Prompt(list(item))
                    for item in items]
        except ValueError as exc:
            raise APIError(400, f"{field} is not valid text: {exc}", param=field) from None

    def truncate(self, prompts: list[Prompt], count: int | None, reserve: int) -> list[Prompt]:
        """truncate_prompt_tokens: each prompt's last `count` tokens (-1: as many as the context holds
        beside `reserve` tokens of completion)."""
        if count is None:
            return prompts
        if count == 0 or (count == -1 and reserve >= self.max_model_len):
            raise APIError(400, "truncate_prompt_tokens must be -1 or at least 1, and leave room for a prompt",
                           param="truncate_prompt_tokens")
        try:
            return [p.last(self.max_model_len - reserve if count == -1 else count) for p in prompts]
        except ValueError as exc:
            raise APIError(400, str(exc), param="truncate_prompt_tokens") from None

    async def with_images(self, token_ids: list[int], urls: list[str],
                          processor_kwargs: dict[str, Any] | None = None) -> Prompt:
        """The prompt of a rendered chat with its images: fetched and decoded off the event loop, then
        their placeholders expanded and pixels made (with the request's `processor_kwargs`) on the
        tokenizer's thread; bad images are a ValueError."""
        if not urls:
            return Prompt(token_ids)
        image_prompts = self.engine.engine.image_prompts
        image_prompts.admit(len(urls))
        for url in urls:  # never the server's own files
            if url.startswith("data:"):
                continue
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"an image_url must be a data: URL or an http(s) URL, not {url!r:.60}")
            host = urllib.parse.urlsplit(url).hostname or ""
            if self.allowed_media_domains and host not in self.allowed_media_domains:
                raise ValueError(f"image URLs may name only {', '.join(self.allowed_media_domains)}, not {host!r}")
        images = await asyncio.to_thread(lambda: [load_image(url) for url in urls])
        token_ids, inputs = await self.run_tokenizer(image_prompts.process, token_ids, images, processor_kwargs)
        return Prompt(token_ids, images=inputs)

    async def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool,
                          template_kwargs: dict[str, Any] | None = None) -> list[int]:
        return await self.run_tokenizer(apply_chat_template, self.tokenizer, messages, add_generation_prompt,
                                        template_kwargs)

    def _max_tokens(self, request: _SamplingRequest, num_prompt_tokens: int, prompt_field: str) -> int:
        room = self.max_model_len - num_prompt_tokens
        requested = request.requested_max_tokens()
        if room <= 0 or (isinstance(requested, int) and requested > room):
            raise self.too_long(num_prompt_tokens, requested, prompt_field if room <= 0 else "max_tokens")
        return requested if requested is not None else room

    def too_long(self, num_prompt_tokens: int, requested: int | None, param: str) -> APIError:
        """OpenAI's context_length_exceeded error."""
        wanted = f", {requested} for the completion" if requested is not None else ""
        return APIError(
            400,
            f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
            f"{num_prompt_tokens + (requested or 0)} tokens ({num_prompt_tokens} in the prompt{wanted}). "
            "Please reduce the length of the prompt or completion.",
            param=param, code="context_length_exceeded",
        )

    def _engine_requests(
        self, ctx: RequestContext, prompt_field: str,
    ) -> list[EngineRequest]:
        if ctx.request.priority != 0 and self.engine.engine.config.scheduling_policy != "priority":
            raise APIError(400, "priority needs the server started with --scheduling-policy priority",
                           param="priority")
        requests = []
        for i, prompt in enumerate(ctx.prompts):
            max_tokens = self._max_tokens(ctx.request, len(prompt.token_ids), prompt_field)
            try:
                params = ctx.request.to_sampling_params(max_tokens, self.engine.engine.sampling_defaults)
                self.engine.engine.validate_prompt(prompt.token_ids, params)
            except InvalidConstraint as exc:
                raise bad_request(exc, ctx.request, ctx.request.constraint_field) from None
            except ValueError as exc:
                raise bad_request(exc, ctx.request, prompt_field) from None
            requests.append(EngineRequest(f"{ctx.request_id}-{i}", prompt.token_ids, params, prompt.text, ctx.arrival,
                                          ctx.lora_request, ctx.request.cache_salt,
                                          priority=ctx.request.priority, thinking=ctx.thinking, images=prompt.images))
        return requests

    def _submit(self, requests: list[EngineRequest]) -> OutputStream:
        if len(requests) > self.engine.max_queue_len:
            raise APIError(400, f"at most {self.engine.max_queue_len} prompts per request", param="prompt")
        try:
            return self.engine.add_requests(requests)
        except QueueFullError as exc:
            raise APIError(503, str(exc), type="server_error", code="queue_full",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except EngineDeadError as exc:
            raise APIError(503, str(exc), type="server_error", code="engine_unavailable") from None

    # ---- running ------------------------------------------------------------------------------

    def model_name(self, lora: LoRARequest | None) -> str:
        """The model a reply names: the adapter's when one was asked for."""
        return lora.name if lora else self.served_model_name

    async def beam_search(self, raw_request: Request, request: _SamplingRequest, prompts: list[Prompt],
                          lora: LoRARequest | None, prompt_field: str) -> list[list[CompletionOutput]] | None:
        """The n best beams of each prompt (`BeamSearch` driven through the async engine one step at
        a time), best first, as outputs; None when the client left (the step in flight is aborted).
        Beams grow to max_tokens, or, when it is unset, to the context length."""
        max_tokens = min(self._max_tokens(request, len(p.token_ids), prompt_field) for p in prompts)
        try:
            params = BeamSearchParams(beam_width=request.n, max_tokens=max_tokens,
                                      ignore_eos=request.ignore_eos, length_penalty=request.length_penalty)
        except ValueError as exc:
            raise bad_request(exc, request, "n") from None  # n is the beam width
        try:
            limits = SamplingParams(max_tokens=params.max_tokens)
            for prompt in prompts:
                self.engine.engine.validate_prompt(prompt.token_ids, limits)
        except ValueError as exc:
            raise bad_request(exc, request) from None
        search = BeamSearch([p.token_ids for p in prompts], params, self.engine.engine.eos_token_ids)
        group = uuid.uuid4().hex

        async def run() -> list[list[Beam]]:
            while not search.finished:
                asked = search.requests()
                stream = self._submit([EngineRequest(f"beam-{group}-{search.steps}-{i}", tokens, search.step_params,
                                                     lora_request=lora, cache_salt=request.cache_salt)
                                       for i, tokens in enumerate(asked)])
                finals: list[RequestOutput] = [None] * len(asked)  # type: ignore[list-item]
                try:
                    async for index, output in stream:
                        if output.finished:
                            finals[index] = output
                finally:
                    stream.close()
                search.advance(finals)
            return search.results()

        results = await until_disconnect(raw_request, run())
        if results is None:
            return None
        return [[CompletionOutput(index=rank, text=self.tokenizer.decode(beam.output_token_ids, skip_special_tokens=True),
                                  token_ids=beam.output_token_ids, cumulative_logprob=beam.cumulative_logprob,
                                  finish_reason="stop" if beam.ends(search.eos) else "length")
                 for rank, beam in enumerate(beams)] for beams in results]

    def new_request_id(self, raw_request: Request, request: _SamplingRequest) -> str:
        return f"{self.id_prefix}-{uuid.uuid4().hex}"

    async def generate(
        self, raw_request: Request, request: _SamplingRequest, prompts: list[Prompt], arrival: float,
        prompt_field: str, lora: LoRARequest | None, new_choice: Callable[[], ChoiceState] = ChoiceState,
        thinking: Thinking | None = None,
    ) -> Response:
        """Validates, queues, and answers with a JSON body or an SSE stream; `lora` is what
        check_model found for the request's model."""
        prompts = self.truncate(prompts, request.truncate_prompt_tokens, request.requested_max_tokens() or 1)
        ctx = RequestContext(self.new_request_id(raw_request, request), self.endpoint,
                             self.model_name(lora), request, prompts, arrival,
                             new_choice=new_choice, lora_request=lora, thinking=thinking)
        if request.has_constraint:
            # Compiling a constraint (a large JSON Schema: many milliseconds) must not stall other streams.
            engine_requests = await self.run_tokenizer(self._engine_requests, ctx, prompt_field)
        else:
            engine_requests = self._engine_requests(ctx, prompt_field)
        ctx.stream = self._submit(engine_requests)
        if request.stream:
            return StreamingResponse(self._event_stream(ctx), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            body = await until_disconnect(raw_request, self._collect(ctx))
        finally:
            ctx.stream.close()
            ctx.log()
        if body is None:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        # pydantic's JSON writes a non-finite logprob as null; json.dumps would write -Infinity.
        return Response(body.model_dump_json(), media_type="application/json")

    async def _outputs(self, ctx: RequestContext) -> AsyncIterator[tuple[int, RequestOutput]]:
        async for index, out in ctx.stream:
            ctx.last[index] = out
            yield index, out

    async def _collect(self, ctx: RequestContext) -> BaseModel:
        try:
            async for _ in self._outputs(ctx):
                pass
        except EngineDeadError as exc:
            ctx.status = "error"
            raise APIError(503, str(exc), type="server_error", code="engine_unavailable") from None
        ctx.status = "finished"
        return self.full_response(ctx, [ctx.last[i] for i in range(len(ctx.prompts))])

    async def _event_stream(self, ctx: RequestContext) -> AsyncIterator[str]:
        # Starlette cancels this generator when the client disconnects; the
        # finally then aborts whatever is unfinished.
        state: dict[int, ChoiceState] = {}
        try:
            async for index, out in self._outputs(ctx):
                for chunk in self.stream_chunks(ctx, index, out, state):
                    yield sse(chunk)
            if ctx.request.include_usage:
                yield sse(self.usage_chunk(ctx))
            ctx.status = "finished"
        except EngineDeadError as exc:
            ctx.status = "error"
            yield sse(ErrorResponse(error=ErrorInfo(message=str(exc), type="server_error", code="engine_unavailable")))
        finally:
            ctx.stream.close()
            ctx.log()
        yield sse("[DONE]")

    # ---- formatting, per endpoint -----------------------------------------------------------

    def full_response(self, ctx: RequestContext, outputs: list[RequestOutput]) -> BaseModel:
        raise NotImplementedError

    def stream_chunks(
        self, ctx: RequestContext, prompt_index: int, output: RequestOutput, state: dict[int, ChoiceState],
    ) -> list[BaseModel]:
        """Chunks for one engine output; `state` is this stream's per-choice memory."""
        raise NotImplementedError

    def usage_chunk(self, ctx: RequestContext) -> BaseModel:
        raise NotImplementedError
