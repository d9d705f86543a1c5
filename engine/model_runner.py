"""Turns a scheduled step into tensors, runs the model, and samples.

It owns the device-side state: the model, the paged KV cache (sized from a
memory budget) and the sampler. Logits are computed only for rows that need
them (the last token of each sequence that samples, plus prompt positions of
requests asking for prompt logprobs), never for the whole batch. An embedding
request takes no logits at all: its prompt's last hidden state, normalized.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from pagoda.engine.attention import select_backend
from pagoda.engine.config import DEFAULT_CPU_KV_CACHE_BYTES, EngineConfig
from pagoda.engine.cuda_graphs import decode_forward
from pagoda.engine.distributed import agree_min
from pagoda.engine.draft_model import DraftModel
from pagoda.engine.kv_cache_layout import plan_kv_cache
from pagoda.engine.layers.attention import attention_windows, bind_kv_cache, kv_block_bytes, kv_cache_row
from pagoda.engine.layers.recurrent import bind_recurrent_state, copy_states, recurrent_mixers, state_bytes
from pagoda.engine.lora import LoRARequest, LoRASlots, read_adapter
from pagoda.engine.model_config import ModelConfig
from pagoda.engine.models.classifier import embedding_pool, pool_rows
from pagoda.engine.models.loader import build_model
from pagoda.engine.sampler import Sampler, SamplingRow, banned_next_tokens, token_logprobs
from pagoda.engine.scheduler import SchedulerOutput
from pagoda.engine.sequence import Sequence
from pagoda.engine.spec_decode import accept
from pagoda.engine.step_inputs import StepInputs, device_tensor

if TYPE_CHECKING:
    from pagoda.engine.tensor_parallel import TensorParallelGroup

logger = logging.getLogger(__name__)


@dataclass
class PromptLogprobs:
    """Prompt logprobs for positions [start, start + len(token_logprobs)) of one sequence's prompt."""

    start: int
    token_logprobs: list[float]
    top: list[list[tuple[int, float]]]


@dataclass
class StepResult:
    # One entry per scheduled sequence that reached the end of its tokens (several, in order, for a
    # speculative one): (seq, token, logprob, top).
    sampled: list[tuple[Sequence, int, float | None, list[tuple[int, float]] | None]]
    prompt_logprobs: list[tuple[Sequence, PromptLogprobs]]
    # Embedding requests whose prompt is complete: (seq, unit-length embedding).
    embeddings: list[tuple[Sequence, list[float]]] = field(default_factory=list)
    # Speculative sequences: how many of their drafts were kept (their kept drafts and the token
    # after them are their entries in `sampled`, in order).
    accepted: dict[Sequence, int] = field(default_factory=dict)


@dataclass
class InFlightStep:
    """A step launched without waiting for its tokens (async scheduling): they stay on the device, where
    the next step reads its placeholders' values, while a copy to the host completes behind `ready`."""

    samplers: list[Sequence]  # the sequences that sample, in the order of `tokens`
    tokens: torch.Tensor  # [len(samplers)] on the device
    host_tokens: torch.Tensor  # the same, arriving in (pinned) host memory
    ready: torch.cuda.Event | None  # recorded after the copy; None on the CPU, where it is done already


class ModelRunner:
    def __init__(
        self,
        config: EngineConfig,
        model_config: ModelConfig,
        eos_token_ids: tuple[int, ...],
        device: torch.device | None = None,
        tp_group: TensorParallelGroup | None = None,
    ) -> None:
        self.config = config
        self.model_config = model_config
        self.device = device or config.resolve_device()
        # Set on the driver (rank 0) of a tensor-parallel engine: steps are shipped to the workers.
        self.tp_group = tp_group
        self.block_size = config.block_size
        self.eos_token_ids = eos_token_ids
        self.model = build_model(model_config, self.device, config.quantization)
        self.backend = select_backend(self.device)
        # Recurrent layers (Mamba, Gated DeltaNet): a state slot for each sequence that may run, one more that the
        # padding rows of CUDA graphs write, and snapshots for the prefix cache (engine/state_cache.py); allocated
        # before the KV cache, which takes what they leave.
        self.mixers = recurrent_mixers(self.model)
        self.num_state_slots = self.num_snapshot_slots = self.state_bytes = 0
        if self.mixers:
            ssm_dtype = config.resolve_mamba_ssm_cache_dtype(model_config.dtype, model_config.hf_config)
            per_slot = state_bytes(self.model, model_config.dtype, ssm_dtype)
            self.num_state_slots, self.num_snapshot_slots = self._state_slots(per_slot)
            slots = self.num_state_slots + 1 + self.num_snapshot_slots
            bind_recurrent_state(self.model, slots, model_config.dtype, ssm_dtype, self.device)
            self.state_bytes = slots * per_slot
        # LoRA slots before the KV cache is sized, so the cache takes only what they leave.
        self.lora = (LoRASlots(self.model, config.max_loras, config.max_lora_rank, model_config.dtype, self.device)
                     if config.enable_lora else None)
        # One token's K (or V) in a layer slot, on this rank: the layers' heads (split across ranks, or
        # replicated when there are fewer heads than ranks) and head size, or one row as wide as the widest.
        self.kv_row = kv_cache_row(self.model)
        self.kv_cache_dtype = config.resolve_kv_cache_dtype(model_config.dtype)
        spec = config.speculative_config
        # A draft model for speculative decoding: loaded before the KV cache is sized, whose blocks it shares.
        self.draft = (DraftModel(spec.model, model_config, self.device, self.kv_cache_dtype)
                      if spec is not None and spec.method == "draft_model" else None)
        # Sliding-window layers in block tables of their own, unless turned off; a draft model addresses its
        # cache by a full-attention group's tables (blocks that live as long as their sequence), so a target
        # whose every layer slides keeps one table then.
        windows = attention_windows(self.model)
        self.layout = plan_kv_cache(windows, hybrid=not config.disable_hybrid_kv_cache_manager
                                    and (self.draft is None or None in windows))
        if self.draft is not None:
            self.draft.table_group = self.layout.windows.index(None)
        self.num_blocks = self._num_kv_blocks()
        self.kv_cache = torch.zeros(
            model_config.kv_planes, self.layout.group_size, self.num_blocks, self.block_size, *self.kv_row,
            dtype=self.kv_cache_dtype, device=self.device,
        )
        bind_kv_cache(self.model, self.kv_cache, self.backend, self.layout)
        if self.draft is not None:
            self.draft.allocate(self.num_blocks, self.block_size)
        self.sampler = Sampler(config.seed)
        # Decode steps replay CUDA graphs on GPU (unless enforce_eager; an encoder never decodes); everything
        # else runs the model.
        self.forward = decode_forward(
            self.model, self.device, config.enforce_eager or model_config.encoder, config.max_num_seqs,
            model_config.max_model_len, self.block_size, len(self.layout.groups),
            self.num_state_slots if self.num_state_slots else None,
        )

    def _state_slots(self, per_slot: int) -> tuple[int, int]:
        """(live slots, snapshot slots) of the recurrent states: max_num_seqs of each (snapshots only with prefix
        caching) within half of the memory the cache may use, the KV blocks taking the rest. Where that half
        holds fewer, fewer sequences run at once (a sequence waits for a slot as for blocks), as vLLM caps a
        hybrid model's concurrency by its state memory; snapshots get what the live slots leave."""
        if self.device.type == "cuda" and self.config.kv_cache_memory_bytes is None:
            total = torch.cuda.get_device_properties(self.device).total_memory
            budget = int(total * self.config.gpu_memory_utilization) - torch.cuda.memory_allocated(self.device)
        else:
            budget = self.config.kv_cache_memory_bytes or DEFAULT_CPU_KV_CACHE_BYTES
        fit = budget // 2 // per_slot - 1  # past the spare slot
        caching = self.config.enable_prefix_caching
        live = agree_min(min(self.config.max_num_seqs, fit // 2 if caching else fit), self.device)
        if live < 1:
            raise ValueError(f"one sequence's recurrent states take {per_slot} bytes: half of the cache budget "
                             f"({budget} bytes) does not hold them; raise the budget")
        if live < self.config.max_num_seqs:
            logger.warning("the recurrent states of %d sequences fill half of the cache budget: at most %d run at "
                           "once (max_num_seqs %d)", live, live, self.config.max_num_seqs)
        return live, agree_min(min(live, fit - live), self.device) if caching else 0

    def _block_bytes(self) -> int:
        """Bytes of one block of K and V over a group's layers, on this rank (the draft model's too)."""
        cfg = self.model_config
        target = kv_block_bytes(self.layout.group_size, *self.kv_row, self.kv_cache_dtype,
                                self.block_size, cfg.kv_planes)
        return target + (self.draft.block_bytes(self.block_size) if self.draft is not None else 0)

    def _num_kv_blocks(self) -> int:
        if self.config.num_kv_blocks is not None:
            return self.config.num_kv_blocks
        if self.model_config.encoder:
            # An encoder's prompt needs its KV only during the one step it runs in: a step's blocks (each
            # prompt may leave one partly filled, and the pool keeps a null block), not the memory budget.
            return -(-self.config.max_num_batched_tokens // self.block_size) + self.config.max_num_seqs + 1
        if self.layout.group_size == 0:
            # No attention layer: blocks hold nothing, and only count tokens. Enough for every sequence at full
            # length, so no sequence waits for blocks (the recurrent states bound memory instead).
            return self.config.max_num_seqs * -(-self.model_config.max_model_len // self.block_size) + 1
        if self.device.type == "cuda" and self.config.kv_cache_memory_bytes is None:
            budget = self._profile_free_gpu_memory()
        else:
            # An explicit budget (on CUDA it replaces profiling against gpu_memory_utilization, as in vLLM).
            # Recurrent states share the budget (as vLLM's hybrid models' states share its KV pool).
            budget = (self.config.kv_cache_memory_bytes or DEFAULT_CPU_KV_CACHE_BYTES) - self.state_bytes
            if budget <= 0:
                raise ValueError(f"the recurrent states of max_num_seqs={self.config.max_num_seqs} sequences take "
                                 f"{self.state_bytes} bytes, more than the KV-cache budget: lower max_num_seqs "
                                 "or raise the budget")
        # Every rank must hold the same blocks: take the smallest budget of any rank.
        blocks = agree_min(budget // self._block_bytes(), self.device)
        if blocks < 1:
            raise ValueError(f"the KV-cache budget of {budget} bytes holds no block of {self._block_bytes()} bytes")
        return int(blocks)

    @torch.inference_mode()
    def _profile_free_gpu_memory(self) -> int:
        """Bytes left for the KV cache: the utilization target minus the peak of a maximal step."""
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        n = min(self.config.max_num_batched_tokens, self.model_config.max_model_len)
        one_block_cache = torch.zeros(
            self.model_config.kv_planes, self.layout.group_size, 1, n, *self.kv_row, dtype=self.kv_cache_dtype,
            device=self.device,
        )
        bind_kv_cache(self.model, one_block_cache, self.backend, self.layout)
        # One prefill of n tokens in that single block, with logits for as many rows as a step samples.
        groups = range(len(self.layout.groups))
        inputs = StepInputs(
            input_ids=[0] * n, positions=list(range(n)), slots=[list(range(n)) for _ in groups], query_lens=[n],
            seq_lens=[n], block_tables=[[[0]] for _ in groups], num_decodes=0, logit_rows=[],
            state_slots=[self.num_state_slots] if self.num_state_slots else [],
        )
        ids, pos, meta = inputs.to_device(self.device)
        hidden = self.model(ids, pos, meta)
        if self.model.lm_head is not None:
            self.model.compute_logits(hidden[-min(n, self.config.max_num_seqs):])
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        del one_block_cache, hidden
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(self.device).total_memory
        return int(total * self.config.gpu_memory_utilization) - peak

    def _build_inputs(
        self, sched: SchedulerOutput,
    ) -> tuple[StepInputs, list[Sequence], list[tuple[Sequence, int, int]], list[tuple[Sequence, int, int]]]:
        """The step's inputs, the sequences that sample, the (seq, first position, rows) of prompt-logprob
        chunks, and the (seq, first hidden row, rows) of embedding requests whose prompt this step completes
        (an encoder's whole prompt; a decoder's last chunk, whose last row is its last token).

        Logit rows list the prompt-logprob rows first, then one row per sampling sequence.
        """
        bs = self.block_size
        groups = range(len(self.layout.groups))
        ids: list[int] = []
        positions: list[int] = []
        slots: list[list[int]] = [[] for _ in groups]
        query_lens: list[int] = []
        seq_lens: list[int] = []
        prompt_rows: list[int] = []
        sample_rows: list[int] = []
        samplers: list[Sequence] = []
        prompt_chunks: list[tuple[Sequence, int, int]] = []
        pooled: list[tuple[Sequence, int, int]] = []
        image_rows: list[int] = []
        image_features: list[torch.Tensor] = []
        key_limits: list[int] | None = None  # every token's, once some token sees past itself
        rope: list[list[int]] | None = None  # every token's three positions, once a prompt chunk has them
        num_decodes = 0
        self._encode_images([seq for seq, n in sched.scheduled if seq.images is not None and seq.images.features is None
                             and seq.images.spans(seq.num_computed_tokens, seq.num_computed_tokens + n)])
        for seq, n in sched.scheduled:
            start = seq.num_computed_tokens
            end = start + n
            offset = len(ids)
            limits = None
            if seq.images is not None and start < seq.num_prompt_tokens:
                for image, feature, position, count in seq.images.spans(start, end):
                    taken, features = seq.images.span_features(image, feature, count)
                    image_rows.extend(offset + position - start + i for i in taken)
                    image_features.append(features)
                limits = seq.images.key_limits(start, end)
            if seq.bidirectional and start < seq.num_prompt_tokens:  # an encoder's prompt: one step, both ways
                limits = [seq.num_prompt_tokens - 1] * n
            if limits is not None and key_limits is None:
                key_limits = list(positions)  # every earlier token sees up to itself
            if key_limits is not None:
                key_limits.extend(limits or range(start, end))
            ids.extend(seq.token_ids[start:end] + seq.spec_token_ids)
            # Multimodal RoPE: a prompt's tokens have three positions; later ones one, shifted by the delta.
            plain = self._rotary_positions(seq, start, end)
            three = seq.images.positions(start, end) if seq.images is not None and start < seq.num_prompt_tokens else None
            if three is not None and rope is None:
                rope = [list(positions) for _ in range(3)]
            if rope is not None:
                for stream, row in zip(rope, three or [plain] * 3):
                    stream.extend(row)
            positions.extend(plain)
            for table, group_slots in zip(seq.block_tables, slots):
                if n == 1:
                    group_slots.append(table[start // bs] * bs + start % bs)
                else:
                    group_slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            num_decodes += n == 1
            query_lens.append(n)
            seq_lens.append(end)
            # Position p's logits score prompt token p + 1: the chunk covers p < num_prompt - 1.
            if seq.wants_prompt_logprobs and start < seq.num_prompt_tokens - 1:
                rows = min(end, seq.num_prompt_tokens - 1) - start
                prompt_rows.extend(range(offset, offset + rows))
                prompt_chunks.append((seq, start, rows))
            if end == seq.num_tokens and seq.embed:
                pooled.append((seq, offset, n))
            elif seq.spec_token_ids:  # every position samples: the real token's and each draft's
                sample_rows.extend(range(offset, offset + n))
                samplers.append(seq)
            elif end == seq.num_tokens:
                sample_rows.append(offset + n - 1)
                samplers.append(seq)
        inputs = StepInputs(ids, positions, slots, query_lens, seq_lens, sched.block_tables, num_decodes,
                            prompt_rows + sample_rows,
                            image_rows=image_rows, image_features=torch.cat(image_features) if image_features else None,
                            key_limits=key_limits or [], rope_positions=[p for stream in rope for p in stream] if rope else [],
                            state_slots=[seq.state_slot for seq, _ in sched.scheduled] if self.num_state_slots else [],
                            state_restores=sched.state_restores, state_saves=sched.state_saves)
        return inputs, samplers, prompt_chunks, pooled

    def _rotary_positions(self, seq: Sequence, start: int, end: int) -> range | list[int]:
        """The rotary table rows of seq's positions [start, end): the positions themselves, past a
        multimodal prompt shifted by its delta, and under LongRoPE offset into the long factors' rows
        (RotaryEmbedding) where transformers would rotate with those."""
        delta = seq.images.rope_delta if seq.images is not None else 0
        original = self.model_config.longrope_original
        if original is None:
            return range(start + delta, end + delta)
        offset = self.model_config.max_model_len
        if self.model_config.rotates_long(seq.num_prompt_tokens):
            return range(start + offset, end + offset)
        return [p + offset if p >= original else p for p in range(start, end)]

    def _encode_images(self, seqs: list[Sequence]) -> None:
        """The images of sequences whose prefill reaches them, through the vision tower and projector in one
        batch; kept on each request's inputs (its other sequences, and a recompute after preemption, reuse them)."""
        inputs = list({id(seq.images): seq.images for seq in seqs}.values())
        if not inputs:
            return
        grids = torch.cat([i.grids for i in inputs]) if inputs[0].grids is not None else None
        features = list(self.model.encode_images(torch.cat([i.pixel_values for i in inputs]).to(self.device), grids))
        for i in inputs:
            i.features, features = features[: len(i.offsets)], features[len(i.offsets):]

    def load_loras(self, loads: list[tuple[int, str, str]]) -> None:
        """A worker's side of the driver's LoRA placements: each adapter read from its path into its slot."""
        for slot, name, path in loads:
            self.lora.load(slot, read_adapter(LoRARequest(name, path), getattr(self.model, "packed_modules", {})))

    def _sampling_row(self, seq: Sequence, drafts: list[int] = ()) -> SamplingRow:
        """How seq samples its next token; with `drafts`, the token after them (were they kept)."""
        params = seq.params
        suppressed: tuple[int, ...] = ()
        if seq.num_output_tokens + len(drafts) < params.min_tokens:
            eos = () if params.ignore_eos else self.eos_token_ids
            suppressed = (*eos, *params.stop_token_ids)
        allowed = seq.grammar.allowed_tokens() if seq.grammar is not None else None
        output = seq.output_token_ids + list(drafts) if drafts else seq.output_token_ids
        if seq.bad_words:
            suppressed = (*suppressed, *banned_next_tokens(seq.bad_words, output))
        return SamplingRow(params, seq.prompt_token_ids, output, seq.generator, suppressed, allowed)

    def _sample(self, logits: torch.Tensor, samplers: list[Sequence]) -> tuple[list, dict[Sequence, int]]:
        """(seq, token, logprob, top) entries and each speculative sequence's kept drafts.

        A speculative sequence samples every position as plain decoding would have (history and
        min_tokens counting the drafts before it); a seeded one's generator is then set to where
        plain decoding would leave it: one draw per kept token, not one per position."""
        if not any(seq.spec_token_ids for seq in samplers):  # most steps: one row per sequence, its token its entry
            out = self.sampler(logits, [self._sampling_row(seq) for seq in samplers])
            return list(zip(samplers, out.token_ids, out.logprobs, out.top_logprobs)), {}
        rows: list[SamplingRow] = []
        for seq in samplers:
            drafts = seq.spec_token_ids
            rows.extend(self._sampling_row(seq, drafts[:i]) for i in range(len(drafts) + 1))
        states = {seq: seq.generator.get_state() for seq in samplers
                  if seq.spec_token_ids and seq.generator is not None and not seq.params.greedy}
        out = self.sampler(logits, rows)
        entries: list = []
        accepted: dict[Sequence, int] = {}
        row = 0
        for seq in samplers:
            width = len(seq.spec_token_ids) + 1
            tokens = out.token_ids[row : row + width]
            kept = accept(seq.spec_token_ids, tokens) if seq.spec_token_ids else tokens
            entries.extend((seq, t, out.logprobs[row + i], out.top_logprobs[row + i]) for i, t in enumerate(kept))
            if seq.spec_token_ids:
                accepted[seq] = len(kept) - 1
                if seq in states and len(kept) < width:
                    seq.generator.set_state(states[seq])
                    for _ in kept:
                        torch.empty(logits.shape[-1], device=logits.device).uniform_(generator=seq.generator)
            row += width
        return entries, accepted

    @torch.inference_mode()
    def forward_logits(
        self, inputs: StepInputs, pending: tuple[list[int], list[int], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Runs the model on a step: float32 logits of its logit rows, and the final hidden states: every
        row's, or (a model whose last layers write no K/V, `output_queries`) only the output rows' unless
        the step pools every row (every rank runs this). `pending` (rows, indices, tokens): input rows
        holding placeholders take tokens[index] from the step in flight, on the device."""
        ids, pos, meta = inputs.to_device(self.device)
        if pending is not None:
            rows, indices, tokens = pending
            ids[device_tensor(rows, torch.long, self.device)] = tokens[device_tensor(indices, torch.long, self.device)]
        copy_states(self.mixers, inputs.state_restores)
        if self.lora is not None:
            self.lora.set_mask(inputs.lora_slots)
        # Steps with adapters run eagerly: the decode graphs were captured without them; so do steps with images.
        eager = self.lora is not None and self.lora.mask is not None
        if inputs.image_rows:
            rows = device_tensor(inputs.image_rows, torch.long, self.device)
            hidden = self.model(ids, pos, meta, image_embeds=(rows, inputs.image_features.to(self.device)))
        else:
            hidden = self.model(ids, pos, meta) if eager else self.forward(ids, pos, meta)
        copy_states(self.mixers, inputs.state_saves)
        if not inputs.logit_rows:
            return None, hidden
        logit_rows = inputs.logit_rows
        if hidden.shape[0] != len(inputs.input_ids):  # the model computed only the output rows, in order
            at = {row: i for i, row in enumerate(meta.output_rows_host)}
            logit_rows = [at[row] for row in logit_rows]
        rows = device_tensor(logit_rows, torch.long, self.device)
        return self.model.compute_logits(hidden[rows]).float(), hidden

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> StepResult:
        inputs, samplers, prompt_chunks, pooled = self._build_inputs(sched)
        if self.lora is not None:
            inputs.lora_slots, loads = self.lora.plan([(seq.lora, n) for seq, n in sched.scheduled],
                                                      sched.running_adapters)
            inputs.lora_loads = [(slot, adapter.name, adapter.path) for slot, adapter in loads]
        # Every row goes through every layer where a request pools them, or adapters are masked per row.
        inputs.all_rows = bool(pooled) or bool(inputs.lora_slots)
        if self.tp_group is not None:
            self.tp_group.broadcast(inputs)
        logits, hidden = self.forward_logits(inputs)
        embeddings = []
        if pooled:
            pooling = getattr(self.model, "pooling", "last")
            rows = torch.stack([pool_rows(hidden[first : first + n], pooling) for _, first, n in pooled])
            vectors = getattr(self.model, "pool", embedding_pool)(rows).cpu().tolist()
            embeddings = [(seq, vector) for (seq, _, _), vector in zip(pooled, vectors)]
        prompt_lp: list[tuple[Sequence, PromptLogprobs]] = []
        row = 0
        for seq, start, rows in prompt_chunks:
            prompt_lp.append((seq, self._prompt_logprobs(seq, start, logits[row : row + rows])))
            row += rows
        sampled: list[tuple[Sequence, int, float | None, list[tuple[int, float]] | None]] = []
        accepted: dict[Sequence, int] = {}
        if samplers:
            sampled, accepted = self._sample(logits[row:], samplers)
        return StepResult(sampled, prompt_lp, embeddings, accepted)

    @torch.inference_mode()
    def launch(self, sched: SchedulerOutput, after: InFlightStep | None) -> InFlightStep:
        """Starts a step without waiting for the one in flight (`after`) nor for its own tokens: a sequence
        whose last token is still `after`'s placeholder reads it on the device. Only steps that need no
        token history on the host come here (no penalties, grammars, logprobs, pooling, drafts:
        LLMEngine.async_scheduling), so sampling needs nothing read back either."""
        inputs, samplers, _, _ = self._build_inputs(sched)
        pending = None
        if after is not None:
            index = {id(seq): i for i, seq in enumerate(after.samplers)}
            rows, indices, offset = [], [], 0
            for seq, n in sched.scheduled:
                if seq.num_pending:  # one new token: the placeholder
                    rows.append(offset)
                    indices.append(index[id(seq)])
                offset += n
            pending = (rows, indices, after.tokens) if rows else None
        logits, _ = self.forward_logits(inputs, pending)
        rows = [self._sampling_row(seq) for seq in samplers]
        tokens = self.sampler.sample_tokens(logits, rows) if samplers else torch.empty(0, dtype=torch.long)
        if tokens.is_cuda:
            host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
            host.copy_(tokens, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        else:
            host, ready = tokens, None
        return InFlightStep(samplers, tokens, host, ready)

    @staticmethod
    def collect(step: InFlightStep) -> StepResult:
        """A launched step's tokens, once they are on the host."""
        if step.ready is not None:
            step.ready.synchronize()
        sampled = [(seq, token, None, None) for seq, token in zip(step.samplers, step.host_tokens.tolist())]
        return StepResult(sampled, [])

    def _prompt_logprobs(self, seq: Sequence, start: int, logits: torch.Tensor) -> PromptLogprobs:
        """Logprob of prompt token p + 1 given tokens up to p, for the chunk's positions p >= start."""
        targets = torch.tensor(seq.prompt_token_ids[start + 1 : start + 1 + logits.shape[0]], device=logits.device)
        values, top = token_logprobs(logits, targets, seq.params.prompt_logprobs or 0)
        return PromptLogprobs(start + 1, values, top)
