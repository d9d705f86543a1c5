"""The engine loop: requests in, one scheduled step at a time, outputs out.

Everything about a request is checked in add_request, before it can touch
the scheduler, so a bad request raises ValueError and the rest of the batch
never notices. step() is synchronous and single-threaded; the async server
front drives it from its own loop.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any, Union

import torch

from pagoda.engine.block_manager import BlockManager
from pagoda.engine.config import EngineConfig
from pagoda.engine.draft_model import DraftModelProposer
from pagoda.engine.lora import LoRAAdapter, LoRARequest, read_adapter
from pagoda.engine.model_config import load_model_config
from pagoda.engine.model_runner import InFlightStep, ModelRunner, StepResult
from pagoda.engine.multimodal import ImageInputs, ImagePrompts
from pagoda.engine.output_processor import OutputProcessor
from pagoda.engine.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from pagoda.engine.pooling import label_names
from pagoda.engine.sampling_params import RequestOutputKind, SamplingParams, sampling_defaults
from pagoda.engine.scheduler import Scheduler, SchedulerOutput
from pagoda.engine.sequence import FinishReason, Sequence
from pagoda.engine.structured_output import Grammar, GrammarCompiler, Thinking
from pagoda.engine.spec_decode import NgramProposer, SpecDecodeStats
from pagoda.engine.tensor_parallel import TensorParallelGroup
from pagoda.engine.tokenizer import bad_word_sequences, load_tokenizer

# A prompt is text, token ids, or a dict with either ("prompt" / "prompt_token_ids").
PromptType = Union[str, list[int], dict[str, Any]]


@dataclass
class _Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    seqs: list[Sequence]
    arrival_time: float
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None
    finished_time: float | None = None
    # Whether its steps may run ahead of their tokens (async scheduling): nothing it samples or reports
    # needs its tokens on the host before the next step (see LLMEngine._overlaps).
    overlaps: bool = False

    @property
    def finished(self) -> bool:
        return all(s.is_finished for s in self.seqs)

    @property
    def reports_every_step(self) -> bool:
        """Whether a step that advances the request makes an output: cumulative requests, and final-only
        ones with stop strings, which the output processor finds in text it makes step by step."""
        return self.params.output_kind is RequestOutputKind.CUMULATIVE or bool(self.params.stop)


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.model_config = load_model_config(config.model, config.dtype, config.max_model_len)
        self.tokenizer = load_tokenizer(config.tokenizer or config.model)
        self.image_prompts = ImagePrompts(self.model_config, self.tokenizer, config.limit_images_per_prompt,
                                          config.mm_processor_kwargs, config.max_num_batched_tokens)
        vision = self.model_config.vision
        if vision is not None and vision.bidirectional and config.max_num_batched_tokens < vision.tokens_per_image:
            raise ValueError(f"an image's {vision.tokens_per_image} tokens attend to each other both ways and must be "
                             f"computed in one step: max_num_batched_tokens ({config.max_num_batched_tokens}) must "
                             "be at least that")
        if self.model_config.encoder and config.max_num_batched_tokens < self.model_config.max_model_len:
            raise ValueError(f"an encoder's prompt runs in one step: max_num_batched_tokens "
                             f"({config.max_num_batched_tokens}) must be at least max_model_len "
                             f"({self.model_config.max_model_len})")
        # What a request that sets no sampling parameter gets: the model's recommended ones.
        self.sampling_defaults = sampling_defaults(config.model, config.generation_config)
        self.eos_token_ids = self._eos_token_ids()
        self.tp_group = TensorParallelGroup(config, self.model_config) if config.tensor_parallel_size > 1 else None
        try:
            self.runner = ModelRunner(config, self.model_config, self.eos_token_ids, tp_group=self.tp_group)
            layout = self.runner.layout
            recurrent = self.runner.num_state_slots > 0
            if recurrent and config.speculative_config is not None:
                raise ValueError("speculative decoding is not supported for models with Mamba layers: their states "
                                 "cannot be rolled back past rejected drafts")
            # An encoder's keys depend on the tokens after them: a prefix's cached KV is not another prompt's.
            # Recurrent layers resume a cached prefix from snapshots of their states (engine/state_cache.py).
            self.block_manager = BlockManager(self.runner.num_blocks, config.block_size,
                                              config.enable_prefix_caching and not self.model_config.encoder,
                                              layout.windows, self.runner.num_state_slots,
                                              self.runner.num_snapshot_slots)
            needed = layout.blocks_for(self.model_config.max_model_len, config.max_num_batched_tokens,
                                       config.block_size)
            usable = self.block_manager.num_usable
            if usable < needed:
                raise ValueError(
                    f"the KV cache holds {usable} blocks of {config.block_size} tokens, fewer than the {needed} one "
                    f"sequence of max_model_len={self.model_config.max_model_len} needs: raise the cache budget "
                    "or lower max_model_len"
                )
        except BaseException:
            # A failed start must not leave workers running, nor this process's tensor-parallel
            # state set: the next engine in the process would all-reduce with ranks that are gone.
            if self.tp_group is not None:
                self.tp_group.shutdown()
            raise
        spec = config.speculative_config
        proposer: NgramProposer | DraftModelProposer | None = None
        if self.runner.draft is not None:
            proposer = DraftModelProposer(self.runner.draft, spec.num_speculative_tokens)
        elif spec is not None:
            proposer = NgramProposer(spec)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens,
                                   config.max_loras, config.scheduling_policy, proposer, self.model_config.max_model_len)
        self.spec_stats = SpecDecodeStats()
        # Async scheduling: where no part of a step needs the previous step's tokens on the host (no
        # tensor-parallel workers fed host lists, drafts, recurrent-state snapshots keyed by block
        # hashes, adapter plans); per request, see _overlaps.
        self.async_scheduling = (config.async_scheduling and self.tp_group is None and proposer is None
                                 and not self.runner.num_state_slots and self.runner.lora is None
                                 and not self.model_config.encoder)
        self.in_flight: InFlightStep | None = None
        self.loras: dict[str, LoRAAdapter] = {}  # the adapters served, by name
        self.requests: dict[str, _Request] = {}
        # Text and stop strings, applied to the core's token-level outputs (see step()).
        self.output_processor = OutputProcessor(self.tokenizer)
        self.grammars = GrammarCompiler(self.tokenizer, self.model_config.vocab_size, self.eos_token_ids)
        self._seq_ids = itertools.count()

    def _eos_token_ids(self) -> tuple[int, ...]:
        ids = list(self.model_config.eos_token_ids)
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return tuple(ids)

    @property
    def max_model_len(self) -> int:
        return self.model_config.max_model_len

    # ---- requests -------------------------------------------------------------------------

    def process_prompt(self, prompt: PromptType) -> tuple[str | None, list[int], ImageInputs | None]:
        """(text or None, token ids, images) of a prompt in any accepted form. A dict may carry images as
        vLLM's offline API takes them, `multi_modal_data={"image": one or a list}` (with
        `mm_processor_kwargs` for the image processor), whose placeholder tokens are expanded here, or
        as `images` already processed (ImageInputs)."""
        text, token_ids = self.tokenize(prompt)
        if not isinstance(prompt, dict):
            return text, token_ids, None
        data = prompt.get("multi_modal_data")
        if not data:
            return text, token_ids, prompt.get("images")
        if not isinstance(data, dict) or set(data) - {"image"}:
            raise ValueError(f"multi_modal_data takes 'image' (one image or a list), got {data!r:.80}")
        images = data["image"] if isinstance(data["image"], (list, tuple)) else [data["image"]]
        token_ids, inputs = self.image_prompts.process(token_ids, list(images), prompt.get("mm_processor_kwargs"))
        return text, token_ids, inputs

    def tokenize(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        """(text or None, token ids) of a prompt in any accepted form."""
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return prompt.get("prompt"), list(prompt["prompt_token_ids"])
            if "prompt" in prompt:
                prompt = prompt["prompt"]
            else:
                raise ValueError("a prompt dict needs 'prompt' or 'prompt_token_ids'")
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt)
        if isinstance(prompt, list):
            return None, list(prompt)
        raise ValueError(f"a prompt must be a string, a list of token ids or a dict, not {type(prompt).__name__}")

    @property
    def pooling_task(self) -> str:
        """What a pooling (embed=True) request yields: "classify" (a classifier's logits) or "embed"."""
        return "classify" if getattr(self.runner.model, "classifies", False) else "embed"

    def require_pooling(self, task: str) -> None:
        """ValueError unless the model serves `task`: embed (an embedding or generative model), classify, or
        score with a one-label classifier (a cross-encoder) or an embedding model."""
        kind = self.pooling_task
        if task == "embed" and kind == "classify":
            raise ValueError(f"this model ({self.model_config.architecture}) is a classifier: it serves "
                             "classify, score and rerank, not embeddings")
        if task == "classify" and kind != "classify":
            raise ValueError(f"this model ({self.model_config.architecture}) is not a sequence classifier")
        labels = len(label_names(self.model_config.hf_config))
        if task == "score" and kind == "classify" and labels != 1:
            raise ValueError(f"this classifier has {labels} labels: "
                             "scoring pairs needs a one-label classifier (a cross-encoder)")

    def validate_prompt(self, token_ids: list[int], params: SamplingParams, embed: bool = False) -> None:
        if not embed and not getattr(self.runner.model, "generates", True):
            serves = "classify, score and rerank" if self.pooling_task == "classify" else "embeddings"
            raise ValueError(f"this model ({self.model_config.architecture}) has no language-model head: "
                             f"it serves {serves} only")
        vocab = self.model_config.vocab_size
        if not token_ids:
            raise ValueError("the prompt is empty")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in token_ids):
            raise ValueError("prompt token ids must be integers")
        bad = [t for t in token_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token id {bad[0]} is outside the vocabulary [0, {vocab})")
        if len(token_ids) > self.max_model_len:
            raise ValueError(
                f"the prompt has {len(token_ids)} tokens, more than the maximum model length {self.max_model_len}"
            )
        params.validate_for_vocab(vocab)
        if params.structured_output is not None:
            self.grammars.compile(params.structured_output)  # refused here, before queuing; then cached

    # ---- LoRA adapters ----------------------------------------------------------------------

    def read_lora(self, request: LoRARequest) -> LoRAAdapter:
        """An adapter read from disk for this model (any thread may do it: nothing is served yet)."""
        if self.runner.lora is None:
            raise ValueError("LoRA adapters are not enabled: start the engine with enable_lora (pagoda serve --enable-lora)")
        return read_adapter(request, getattr(self.runner.model, "packed_modules", {}))

    def install_lora(self, adapter: LoRAAdapter) -> LoRAAdapter:
        """Checks an adapter against the model and serves it under its name (a no-op for the same path)."""
        known = self.loras.get(adapter.name)
        if known is not None:
            if known.path != adapter.path:
                raise ValueError(f"a LoRA adapter named {adapter.name!r} is already served from {known.path}")
            return known
        self.runner.lora.check(adapter)
        self.loras[adapter.name] = adapter
        return adapter

    def add_lora(self, request: LoRARequest) -> LoRAAdapter:
        """Reads, checks and serves an adapter; the one already served under that name if the path is the same."""
        known = self.loras.get(request.name)
        if known is not None and known.path == request.path:
            return known
        return self.install_lora(self.read_lora(request))

    def remove_lora(self, name: str) -> None:
        """Stops serving an adapter; refused while requests still run with it."""
        adapter = self.loras.get(name)
        if adapter is None:
            raise ValueError(f"no LoRA adapter named {name!r} is served")
        if any(seq.lora is adapter for req in self.requests.values() for seq in req.seqs):
            raise ValueError(f"LoRA adapter {name!r} is in use by running requests")
        del self.loras[name]
        self.runner.lora.forget(adapter)

    # ---- requests (continued) ---------------------------------------------------------------

    def add_request(
        self, request_id: str, prompt: PromptType, params: SamplingParams | None = None,
        arrival_time: float | None = None, lora_request: LoRARequest | None = None,
        cache_salt: str | None = None, embed: bool = False, priority: int = 0, thinking: Thinking | None = None,
    ) -> None:
        """Queues a request. `cache_salt` keeps its prompt's KV blocks from being shared with requests
        of another salt (tenants that must not learn of each other's prompts through cache timing).
        With `embed`, nothing is generated: the output carries the prompt's embedding (its last
        token's final hidden state, of unit length, as decoder embedding models are trained).
        `priority` (lower runs first) needs the "priority" scheduling policy. With `thinking`, a
        structured output's constraint starts after the model's thinking."""
        params = params or SamplingParams()
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        text, token_ids, images = self.process_prompt(prompt)
        self.validate_prompt(token_ids, params, embed)
        if priority != 0 and self.config.scheduling_policy != "priority":
            raise ValueError("priority needs the priority scheduling policy (pagoda serve --scheduling-policy priority)")
        lora = self.add_lora(lora_request) if lora_request is not None else None
        if embed and (params.n != 1 or params.structured_output is not None or params.prompt_logprobs is not None):
            raise ValueError("an embedding request takes one prompt and no sampling options")
        constraint = self.grammars.compile(params.structured_output) if params.structured_output else None
        arrival = time.monotonic() if arrival_time is None else arrival_time
        seqs = [self._new_sequence(request_id, i, token_ids, params, arrival) for i in range(params.n)]
        salt = None
        # A prompt past LongRoPE's original context rotates every token with the long factors: its KV blocks
        # are not those of a shorter prompt with the same tokens.
        long_rotary = self.model_config.rotates_long(len(token_ids))
        if lora is not None or cache_salt is not None or long_rotary:
            salt = hash((lora.cache_salt if lora is not None else None, cache_salt, long_rotary))
        for seq in seqs:
            seq.lora, seq.cache_salt, seq.embed, seq.priority, seq.images = lora, salt, embed, priority, images
            seq.bidirectional = self.model_config.encoder
        if constraint is not None:
            for seq in seqs:
                seq.grammar = Grammar(constraint, self.grammars.vocab_size, thinking)
        if params.bad_words:
            banned = bad_word_sequences(self.tokenizer, params.bad_words)
            for seq in seqs:
                seq.bad_words = banned
        self.requests[request_id] = _Request(request_id, text, token_ids, params, seqs, arrival,
                                             overlaps=not embed and self._overlaps(params))
        self.output_processor.add_request(request_id, token_ids, params)
        for seq in seqs:
            self.scheduler.add(seq)

    @staticmethod
    def _overlaps(params: SamplingParams) -> bool:
        """Whether a request's next step can be built before its last token is on the host: not where
        sampling reads its history (penalties, bad words, a grammar) or reports logprobs."""
        return not (params.needs_penalties or params.bad_words or params.structured_output is not None
                    or params.logprobs is not None or params.prompt_logprobs is not None)

    def _new_sequence(
        self, request_id: str, index: int, token_ids: list[int], params: SamplingParams, arrival: float
    ) -> Sequence:
        generator = None
        if params.seed is not None:
            # Each of the n completions gets its own stream, derived from the request's seed.
            generator = torch.Generator(device=self.runner.device)
            generator.manual_seed((params.seed + index) % (1 << 64))
        return Sequence(next(self._seq_ids), request_id, index, token_ids, params, generator, arrival)

    def abort_request(self, request_id: str) -> bool:
        """Ends a request at any point, freeing its KV blocks now; False if it is unknown."""
        self.output_processor.abort_request(request_id)
        req = self.requests.pop(request_id, None)
        if req is None:
            return False
        for seq in req.seqs:
            self.scheduler.finish(seq, FinishReason.ABORT)
        return True

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def check_health(self) -> None:
        """Raises if the engine can no longer run steps (a tensor-parallel worker died)."""
        if self.tp_group is not None:
            self.tp_group.check_health()

    def shutdown(self) -> None:
        """Stops tensor-parallel workers; the engine is unusable afterwards."""
        if self.tp_group is not None:
            self.tp_group.shutdown()

    # ---- the step -------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Runs one step and returns its outputs with their text; stop strings end sequences at once."""
        outputs, stops = self.output_processor.process(self.core_step())
        for stop in stops:
            self.stop_sequence(stop.request_id, stop.index, stop.stop)
        return outputs

    def stop_sequence(self, request_id: str, index: int, stop: str) -> RequestOutput | None:
        """Ends completion `index` of a request on a stop string found in its text.

        Returns the request's final token-level output if that was its last
        running completion, None otherwise (or if it had ended already).
        """
        req = self.requests.get(request_id)
        if req is None or req.seqs[index].is_finished:
            return None
        seq = req.seqs[index]
        seq.stop_reason = stop
        self.scheduler.finish(seq, FinishReason.STOP)
        return self._make_output(req, time.monotonic()) if req.finished else None

    def core_step(self) -> list[RequestOutput]:
        """Runs one scheduled step; a token-level output (no text yet) for every request that advanced.

        With async scheduling (and while every request allows it), a step is launched before the previous
        one's tokens are read back, and the outputs returned are the previous step's: the host schedules,
        prepares and launches while the GPU computes, instead of in turn."""
        if self.async_scheduling and all(req.overlaps for req in self.requests.values()):
            return self._overlapped_step()
        if self.in_flight is not None:  # a request that needs its tokens on the host: finish the step in flight
            step, self.in_flight = self.in_flight, None
            return self._apply_result(self.runner.collect(step))
        sched = self.scheduler.schedule()
        if sched.is_empty:
            return []
        self._mark_scheduled(sched)
        result = self.runner.execute(sched)
        for seq, n in sched.scheduled:
            # A speculative sequence computed its last real token and the drafts it kept.
            seq.num_computed_tokens += 1 + result.accepted[seq] if seq.spec_token_ids else n
        for seq, accepted in result.accepted.items():
            self.spec_stats.record(len(seq.spec_token_ids), accepted)
            self.scheduler.proposer.record(seq, accepted)
            seq.spec_token_ids = []
        return self._apply_result(result)

    def _overlapped_step(self) -> list[RequestOutput]:
        """Launches the next step (its sequences' last tokens may be the step in flight's placeholders), then
        collects the step in flight: its tokens replace their placeholders, and its outputs are returned."""
        sched = self.scheduler.schedule()
        launched = None
        if not sched.is_empty:
            self._mark_scheduled(sched)
            launched = self.runner.launch(sched, self.in_flight)
            for seq, n in sched.scheduled:
                seq.num_computed_tokens += n
            for seq in launched.samplers:
                seq.append_pending()
        previous, self.in_flight = self.in_flight, launched
        return self._apply_result(self.runner.collect(previous)) if previous is not None else []

    @staticmethod
    def _mark_scheduled(sched: SchedulerOutput) -> None:
        now = time.monotonic()
        for seq, _ in sched.scheduled:
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = now

    def _apply_result(self, result: StepResult) -> list[RequestOutput]:
        """A step's tokens and embeddings onto their sequences, stop checks, and the outputs to report."""
        touched: dict[str, _Request] = {}
        ended: set[str] = set()  # requests with a sequence that finished now: the only ones that can be finished
        self._record_prompt_logprobs(result)
        now = time.monotonic()
        for seq, embedding in result.embeddings:
            seq.embedding, seq.first_token_time = embedding, now
            self.scheduler.finish(seq, FinishReason.STOP)
            touched[seq.request_id] = self.requests[seq.request_id]
            ended.add(seq.request_id)
        for seq, token, logprob, top in result.sampled:
            if seq.is_finished:  # a speculative sequence that stopped before its last kept token
                continue
            if seq.num_pending:
                seq.resolve_pending(token)
            else:
                seq.append_token(token)
            if seq.first_token_time is None:
                seq.first_token_time = now
            if seq.params.logprobs is not None:
                entry = self._logprob_entry(token, logprob, top)
                seq.output_logprobs.append(entry)
                seq.cumulative_logprob += entry[token].logprob
            reason = self._check_stop(seq, token)
            if reason is not None:
                self.scheduler.finish(seq, reason)
                ended.add(seq.request_id)
            touched[seq.request_id] = self.requests[seq.request_id]
        return [self._make_output(req, now) for request_id, req in touched.items()
                if req.reports_every_step or (request_id in ended and req.finished)]

    def _record_prompt_logprobs(self, result: StepResult) -> None:
        for seq, chunk in result.prompt_logprobs:
            req = self.requests[seq.request_id]
            if req.prompt_logprobs is None:
                req.prompt_logprobs = [None] * len(req.prompt_token_ids)
            for i, (value, top) in enumerate(zip(chunk.token_logprobs, chunk.top)):
                pos = chunk.start + i
                req.prompt_logprobs[pos] = self._logprob_entry(req.prompt_token_ids[pos], value, top)
            if seq.num_computed_tokens >= seq.num_prompt_tokens:
                for s in req.seqs:  # computed once, shared by the request's n completions
                    s.prompt_logprobs = req.prompt_logprobs

    @staticmethod
    def _logprob_entry(token: int, logprob: float | None, top: list[tuple[int, float]] | None) -> dict[int, Logprob]:
        """The top tokens and the chosen one; their text is the output processor's work, off the step."""
        entry = {tid: Logprob(value, rank) for rank, (tid, value) in enumerate(top or (), start=1)}
        if token not in entry:
            entry[token] = Logprob(logprob if logprob is not None else float("nan"), None)
        return entry

    def _check_stop(self, seq: Sequence, token: int) -> FinishReason | None:
        params = seq.params
        # A structured output ends with its constraint: on its stop token, even
        # under ignore_eos, or when nothing was left to allow (the text was
        # complete but min_tokens suppressed the stop tokens).
        if seq.grammar is not None and (not seq.grammar.accept(token) or seq.grammar.is_terminated):
            seq.stop_reason = None
            return FinishReason.STOP
        is_eos = not params.ignore_eos and token in self.eos_token_ids
        # A later step's placeholder is no token yet.
        if (is_eos or token in params.stop_token_ids) and seq.num_known_output_tokens >= params.min_tokens:
            seq.stop_reason = None if is_eos else token
            return FinishReason.STOP
        return FinishReason.LENGTH if seq.at_length_limit(self.max_model_len) else None

    def _make_output(self, req: _Request, now: float) -> RequestOutput:
        finished = req.finished
        if finished:
            req.finished_time = now
            del self.requests[req.request_id]
        outputs = []
        for seq in req.seqs:
            done = seq.is_finished
            wants_logprobs = seq.params.logprobs is not None
            outputs.append(
                CompletionOutput(
                    index=seq.index,
                    text="",  # filled by the output processor
                    # Snapshots: a consumer on another thread (the server) must not see later tokens.
                    token_ids=seq.output_token_ids[: seq.num_known_output_tokens],
                    cumulative_logprob=seq.cumulative_logprob if wants_logprobs else None,
                    logprobs=list(seq.output_logprobs) if wants_logprobs else None,
                    finish_reason=seq.finish_reason.value if done else None,
                    stop_reason=seq.stop_reason,
                )
            )
        first = req.seqs[0]
        metrics = RequestMetrics(
            arrival_time=req.arrival_time,
            first_scheduled_time=first.first_scheduled_time,
            first_token_time=min((s.first_token_time for s in req.seqs if s.first_token_time), default=None),
            finished_time=req.finished_time,
            num_cached_tokens=first.num_cached_tokens,
            num_preemptions=sum(s.num_preemptions for s in req.seqs),
        )
        return RequestOutput(
            request_id=req.request_id,
            prompt=req.prompt,
            prompt_token_ids=req.prompt_token_ids,
            outputs=outputs,
            finished=finished,
            prompt_logprobs=req.prompt_logprobs,
            metrics=metrics,
            num_cached_tokens=first.num_cached_tokens,
            embedding=first.embedding,
        )
