"""Turns a scheduled step into tensors, runs the model, and samples.

It owns the device-side state: the model, the paged KV cache (sized from a
memory budget) and the sampler. Logits are computed only for rows that need
them (the last token of each sequence that samples, plus prompt positions of
requests asking for prompt logprobs), never for the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pagoda.engine.attention import AttentionMetadata, select_backend
from pagoda.engine.config import DEFAULT_CPU_KV_CACHE_BYTES, EngineConfig
from pagoda.engine.cuda_graphs import decode_forward
from pagoda.engine.distributed import tp_size
from pagoda.engine.layers.attention import bind_kv_cache
from pagoda.engine.model_config import ModelConfig
from pagoda.engine.models.loader import build_model
from pagoda.engine.sampler import Sampler, SamplingRow, token_logprobs
from pagoda.engine.scheduler import SchedulerOutput
from pagoda.engine.sequence import Sequence


@dataclass
class PromptLogprobs:
    """Prompt logprobs for positions [start, start + len(token_logprobs)) of one sequence's prompt."""

    start: int
    token_logprobs: list[float]
    top: list[list[tuple[int, float]]]


@dataclass
class StepResult:
    # One entry per scheduled sequence that reached the end of its tokens: (seq, token, logprob, top).
    sampled: list[tuple[Sequence, int, float | None, list[tuple[int, float]] | None]]
    prompt_logprobs: list[tuple[Sequence, PromptLogprobs]]


class ModelRunner:
    def __init__(self, config: EngineConfig, model_config: ModelConfig, eos_token_ids: tuple[int, ...]) -> None:
        self.config = config
        self.model_config = model_config
        self.device = config.resolve_device()
        self.block_size = config.block_size
        self.eos_token_ids = eos_token_ids
        self.model = build_model(model_config, self.device)
        self.backend = select_backend(self.device)
        self.num_blocks = self._num_kv_blocks()
        kv_heads = max(1, model_config.num_kv_heads // tp_size())
        self.kv_cache = torch.zeros(
            2, model_config.num_layers, self.num_blocks, self.block_size, kv_heads, model_config.head_dim,
            dtype=model_config.dtype, device=self.device,
        )
        bind_kv_cache(self.model, self.kv_cache, self.backend)
        self.sampler = Sampler(config.seed)
        # Decode steps replay CUDA graphs on GPU (unless enforce_eager); everything else runs the model.
        self.forward = decode_forward(
            self.model, self.device, config.enforce_eager, config.max_num_seqs,
            model_config.max_model_len, self.block_size,
        )

    def _block_bytes(self) -> int:
        return self.model_config.kv_bytes_per_token // tp_size() * self.block_size

    def _num_kv_blocks(self) -> int:
        if self.config.num_kv_blocks is not None:
            return self.config.num_kv_blocks
        if self.device.type == "cuda":
            budget = self._profile_free_gpu_memory()
        else:
            budget = self.config.kv_cache_memory_bytes or DEFAULT_CPU_KV_CACHE_BYTES
        blocks = budget // self._block_bytes()
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
            2, self.model_config.num_layers, 1, n, max(1, self.model_config.num_kv_heads // tp_size()),
            self.model_config.head_dim, dtype=self.model_config.dtype, device=self.device,
        )
        bind_kv_cache(self.model, one_block_cache, self.backend)
        meta = AttentionMetadata(
            slot_mapping=torch.arange(n, device=self.device),
            query_start_loc=torch.tensor([0, n], dtype=torch.int32, device=self.device),
            seq_lens=torch.tensor([n], dtype=torch.int32, device=self.device),
            block_tables=torch.zeros(1, 1, dtype=torch.int32, device=self.device),
            num_decodes=0, max_query_len=n, max_seq_len=n, query_lens_host=[n], seq_lens_host=[n],
        )
        ids = torch.zeros(n, dtype=torch.long, device=self.device)
        hidden = self.model(ids, torch.arange(n, device=self.device), meta)
        self.model.compute_logits(hidden[-min(n, self.config.max_num_seqs):])
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        del one_block_cache, hidden
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(self.device).total_memory
        return int(total * self.config.gpu_memory_utilization) - peak

    def _build_inputs(self, sched: SchedulerOutput) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_lens: list[int] = []
        seq_lens: list[int] = []
        num_decodes = 0
        for seq, n in sched.scheduled:
            start = seq.num_computed_tokens
            end = start + n
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            table = seq.block_table
            if n == 1:
                num_decodes += 1
                slots.append(table[start // bs] * bs + start % bs)
            else:
                slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            query_lens.append(n)
            seq_lens.append(end)
        max_blocks = max(len(seq.block_table) for seq, _ in sched.scheduled)
        tables = [seq.block_table + [0] * (max_blocks - len(seq.block_table)) for seq, _ in sched.scheduled]
        qsl = [0]
        for q in query_lens:
            qsl.append(qsl[-1] + q)
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            block_tables=torch.tensor(tables, dtype=torch.int32, device=dev),
            num_decodes=num_decodes,
            max_query_len=max(query_lens),
            max_seq_len=max(seq_lens),
            query_lens_host=query_lens,
            seq_lens_host=seq_lens,
        )
        ids = torch.tensor(input_ids, dtype=torch.long, device=dev)
        pos = torch.tensor(positions, dtype=torch.long, device=dev)
        return ids, pos, meta

    def _sampling_row(self, seq: Sequence) -> SamplingRow:
        params = seq.params
        suppressed: tuple[int, ...] = ()
        if seq.num_output_tokens < params.min_tokens:
            eos = () if params.ignore_eos else self.eos_token_ids
            suppressed = (*eos, *params.stop_token_ids)
        return SamplingRow(params, seq.prompt_token_ids, seq.output_token_ids, seq.generator, suppressed)

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> StepResult:
        ids, pos, meta = self._build_inputs(sched)
        hidden = self.forward(ids, pos, meta)
        sample_idx: list[int] = []
        samplers: list[Sequence] = []
        prompt_lp: list[tuple[Sequence, PromptLogprobs]] = []
        offset = 0
        for seq, n in sched.scheduled:
            end = seq.num_computed_tokens + n
            if seq.wants_prompt_logprobs and seq.num_computed_tokens < seq.num_prompt_tokens - 1:
                prompt_lp.append((seq, self._prompt_logprobs(seq, hidden[offset : offset + n])))
            offset += n
            if end == seq.num_tokens:
                sample_idx.append(offset - 1)
                samplers.append(seq)
        sampled: list[tuple[Sequence, int, float | None, list[tuple[int, float]] | None]] = []
        if samplers:
            logits = self.model.compute_logits(hidden[sample_idx]).float()
            out = self.sampler(logits, [self._sampling_row(s) for s in samplers])
            sampled = list(zip(samplers, out.token_ids, out.logprobs, out.top_logprobs))
        return StepResult(sampled, prompt_lp)

    def _prompt_logprobs(self, seq: Sequence, hidden: torch.Tensor) -> PromptLogprobs:
        """Logprob of prompt token p+1 given tokens up to p, for this chunk's positions p."""
        start = seq.num_computed_tokens
        stop = min(start + hidden.shape[0], seq.num_prompt_tokens - 1)
        logits = self.model.compute_logits(hidden[: stop - start]).float()
        targets = torch.tensor(seq.prompt_token_ids[start + 1 : stop + 1], device=logits.device)
        values, top = token_logprobs(logits, targets, seq.params.prompt_logprobs or 0)
        return PromptLogprobs(start + 1, values, top)
