"""The async front of the engine: requests from an asyncio loop, steps on a thread.

LLMEngine is synchronous and not thread-safe, so exactly one thread, the
engine thread, ever touches it. The event loop talks to that thread through
an inbox (adds and aborts, applied between steps, so an abort frees its KV
blocks before the next step at the latest) and gets outputs back through
`call_soon_threadsafe`, one callback per step, which fans them out to
per-request asyncio queues. A step, prefill or decode, therefore never blocks
the loop. Detokenization and stop strings (the engine's output processor) run
on the loop as outputs arrive, overlapping the next step instead of
lengthening it; a stop string found there goes back through the inbox to stop
its sequence.

Requests arrive here already tokenized and validated by the server: the
engine thread should never see a bad request, and if it does anyway the error
goes back to that request only.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pagoda.engine.llm_engine import LLMEngine
from pagoda.engine.lora import LoRARequest
from pagoda.engine.metrics import EngineMetrics, EngineStats
from pagoda.engine.multimodal import ImageInputs
from pagoda.engine.output_processor import StopRequest
from pagoda.engine.outputs import RequestOutput
from pagoda.engine.sampling_params import SamplingParams
from pagoda.engine.structured_output import Thinking

logger = logging.getLogger(__name__)

# How long the idle engine thread sleeps on its inbox before checking for shutdown.
_IDLE_POLL_S = 0.5

T = TypeVar("T")


class EngineDeadError(RuntimeError):
    """The engine thread died; every request fails until the process is restarted."""


class QueueFullError(RuntimeError):
    """The waiting queue is at its limit; the client should retry later."""


@dataclass
class EngineRequest:
    """A validated request, ready for LLMEngine.add_request."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    prompt: str | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    lora_request: LoRARequest | None = None
    cache_salt: str | None = None
    embed: bool = False
    priority: int = 0
    thinking: Thinking | None = None
    images: ImageInputs | None = None  # the prompt's images, placeholders already expanded in its ids


@dataclass
class _Abort:
    request_id: str


@dataclass
class _StopSequence:
    stop: StopRequest


@dataclass
class _Call:
    fn: Callable[[LLMEngine], Any]
    future: asyncio.Future[Any]


class _Stop:
    pass


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine, *, max_queue_len: int, metrics: EngineMetrics | None = None) -> None:
        if max_queue_len < 1:
            raise ValueError("max_queue_len must be >= 1")
        self.engine = engine
        self.max_queue_len = max_queue_len
        self.metrics = metrics
        self.stats = EngineStats()  # replaced (never mutated) by the engine thread after each iteration
        self._inbox: queue.SimpleQueue[EngineRequest | _Abort | _StopSequence | _Call | _Stop] = queue.SimpleQueue()
        # Weak values: a stream dropped without close() (its consumer never started) is
        # collected, and its __del__ aborts what it had left.
        self._streams: weakref.WeakValueDictionary[str, OutputStream] = weakref.WeakValueDictionary()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the engine thread; must be called from the event loop that will make requests."""
        if self._thread is not None:
            raise RuntimeError("the engine is already started")
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="pagoda-engine", daemon=True)
        self._thread.start()

    async def shutdown(self) -> None:
        """Stops the engine thread; requests still in flight are aborted."""
        if self._thread is None:
            return
        self._inbox.put(_Stop())
        await asyncio.to_thread(self._thread.join)

    @property
    def is_alive(self) -> bool:
        """The engine thread runs and has not failed: what the liveness probe reports."""
        return self._thread is not None and self._thread.is_alive() and self._error is None

    # ---- admission ------------------------------------------------------------------------

    @property
    def num_waiting(self) -> int:
        """Requests accepted but not yet running, as the event loop sees them now."""
        return max(len(self._streams) - self.stats.num_running, 0)

    @property
    def has_room(self) -> bool:
        return self.num_waiting < self.max_queue_len

    # ---- requests -------------------------------------------------------------------------

    def add_requests(self, requests: list[EngineRequest]) -> OutputStream:
        """Queues requests (an HTTP request's prompts) at once; their outputs come on one stream.

        All or none are accepted: QueueFullError if they would not all fit in
        the waiting queue. The check and the registration happen without
        yielding to the loop, so concurrent requests cannot slip past the
        limit together (the running count it uses is at most one step old).
        """
        if self._error is not None:
            raise EngineDeadError("the engine has stopped") from self._error
        if self.num_waiting + len(requests) > self.max_queue_len:
            raise QueueFullError(f"the request queue is full ({self.max_queue_len} waiting)")
        ids = [r.request_id for r in requests]
        if len(set(ids)) != len(ids) or any(i in self._streams for i in ids):
            raise ValueError(f"request ids {ids} are already in use")
        stream = OutputStream(self, ids)
        for request in requests:
            self._streams[request.request_id] = stream
            self._inbox.put(request)
        return stream

    async def call(self, fn: Callable[[LLMEngine], T]) -> T:
        """fn(engine), run on the engine thread between two steps: how the front changes the
        engine's state (LoRA adapters) without racing its loop. A ValueError is raised here."""
        if self._error is not None:
            raise EngineDeadError("the engine has stopped") from self._error
        future: asyncio.Future[T] = self._loop.create_future()
        self._inbox.put(_Call(fn, future))
        return await future

    def abort(self, request_id: str) -> None:
        self._streams.pop(request_id, None)
        self._inbox.put(_Abort(request_id))

    def _forget(self, request_id: str) -> None:
        self._streams.pop(request_id, None)

    # ---- the engine thread ----------------------------------------------------------------

    def _run(self) -> None:
        engine = self.engine
        try:
            while True:
                if not self._apply_inbox(block=not engine.has_unfinished_requests()):
                    break
                # A dead tensor-parallel worker fails the loop even while idle, so /health reports it.
                engine.check_health()
                outputs = engine.core_step() if engine.has_unfinished_requests() else []
                stats = self._snapshot()
                if self.metrics is not None:
                    self.metrics.record_step(stats, outputs)
                self.stats = stats
                if outputs:
                    self._loop.call_soon_threadsafe(self._dispatch, outputs)
        except BaseException as exc:  # noqa: BLE001 - anything here leaves the engine unusable
            logger.exception("the engine loop failed")
            self._error = exc
            self._loop.call_soon_threadsafe(self._fail_all, exc)
            return
        for request_id in list(engine.requests):
            self._abort_in_engine(request_id)
        engine.shutdown()
        self.stats = self._snapshot()
        self._error = EngineDeadError("the engine was shut down")
        self._loop.call_soon_threadsafe(self._fail_all, self._error)

    def _apply_inbox(self, block: bool) -> bool:
        """Applies every pending add and abort; False once asked to stop."""
        try:
            item = self._inbox.get(timeout=_IDLE_POLL_S) if block else self._inbox.get_nowait()
        except queue.Empty:
            return True
        while True:
            if isinstance(item, _Stop):
                return False
            if isinstance(item, _Abort):
                self._abort_in_engine(item.request_id)
            elif isinstance(item, _StopSequence):
                self._stop_in_engine(item.stop)
            elif isinstance(item, _Call):
                self._call_in_engine(item)
            else:
                self._add_to_engine(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return True

    def _add_to_engine(self, add: EngineRequest) -> None:
        prompt = {"prompt": add.prompt, "prompt_token_ids": add.prompt_token_ids, "images": add.images}
        try:
            self.engine.add_request(add.request_id, prompt, add.params, arrival_time=add.arrival_time,
                                    lora_request=add.lora_request, cache_salt=add.cache_salt, embed=add.embed,
                                    priority=add.priority, thinking=add.thinking)
        except ValueError as exc:
            self._loop.call_soon_threadsafe(self._deliver, add.request_id, exc)

    def _call_in_engine(self, call: _Call) -> None:
        def settle(outcome: Any, failed: bool) -> None:
            if not call.future.done():
                (call.future.set_exception if failed else call.future.set_result)(outcome)

        try:
            result, failed = call.fn(self.engine), False
        except ValueError as exc:
            result, failed = exc, True
        self._loop.call_soon_threadsafe(settle, result, failed)

    def _stop_in_engine(self, stop: StopRequest) -> None:
        final = self.engine.stop_sequence(stop.request_id, stop.index, stop.stop)
        if final is not None and self.metrics is not None:
            self.metrics.record_step(self._snapshot(), [final])

    def _abort_in_engine(self, request_id: str) -> None:
        if self.engine.abort_request(request_id) and self.metrics is not None:
            self.metrics.record_abort(request_id)

    def _snapshot(self) -> EngineStats:
        engine = self.engine
        running = {seq.request_id for seq in engine.scheduler.running}
        cache = engine.block_manager.stats
        return EngineStats(
            num_running=len(running),
            num_waiting=len(engine.requests) - len(running),
            kv_cache_usage=engine.block_manager.usage,
            prefix_cache_queries=cache.queries,
            prefix_cache_hits=cache.hits,
            num_preemptions=engine.scheduler.num_preemptions,
            spec_draft_tokens=engine.spec_stats.draft_tokens,
            spec_accepted_tokens=engine.spec_stats.accepted_tokens,
        )

    # ---- back on the event loop -----------------------------------------------------------

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        outputs, stops = self.engine.output_processor.process(outputs)
        for stop in stops:
            self._inbox.put(_StopSequence(stop))
        for out in outputs:
            self._deliver(out.request_id, out)

    def _deliver(self, request_id: str, item: RequestOutput | BaseException) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:  # None: the consumer left and its abort is on its way
            stream._put(request_id, item)

    def _fail_all(self, exc: BaseException) -> None:
        error = exc if isinstance(exc, EngineDeadError) else EngineDeadError(f"the engine loop failed: {exc!r}")
        for request_id in list(self._streams):
            self._deliver(request_id, error)


class OutputStream:
    """Outputs of a group of engine requests as (index in the group, output) pairs.

    Iteration ends once every request has finished. close() (idempotent, and
    also run when the stream is garbage collected) aborts whatever is still
    unfinished: whoever consumes a stream calls it in a `finally`, so a
    cancelled consumer, e.g. the handler of a client that disconnected, frees
    the engine's KV blocks right away.
    """

    def __init__(self, engine: AsyncLLMEngine, request_ids: list[str]) -> None:
        self._engine = engine
        self.request_ids = request_ids
        self._index = {rid: i for i, rid in enumerate(request_ids)}
        self._unfinished = set(request_ids)
        self._queue: asyncio.Queue[tuple[int, RequestOutput | BaseException]] = asyncio.Queue()

    def _put(self, request_id: str, item: RequestOutput | BaseException) -> None:
        self._queue.put_nowait((self._index[request_id], item))

    def __aiter__(self) -> OutputStream:
        return self

    async def __anext__(self) -> tuple[int, RequestOutput]:
        if not self._unfinished:
            raise StopAsyncIteration
        index, item = await self._queue.get()
        request_id = self.request_ids[index]
        if isinstance(item, BaseException):
            self._unfinished.discard(request_id)  # the engine has already dropped it
            self._engine._forget(request_id)
            self.close()
            raise item
        if item.finished:
            self._unfinished.discard(request_id)
            self._engine._forget(request_id)
        return index, item

    def close(self) -> None:
        for request_id in self._unfinished:
            self._engine.abort(request_id)
        self._unfinished.clear()

    def __del__(self) -> None:
        # Only the inbox is touched here: SimpleQueue.put is safe in finalizers.
        for request_id in self._unfinished:
            self._engine._inbox.put(_Abort(request_id))
