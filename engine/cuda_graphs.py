"""CUDA graphs for decode steps: one capture per padded batch size, replayed in place of the model.

A decode step of a small model is a few hundred short kernels; launched one
by one from Python, launch overhead (several microseconds each) rivals the
time the GPU needs to stream the weights. A captured graph launches them all
at once. Graphs replay fixed addresses and fixed launch shapes, hence:

- inputs are copied into static buffers; a batch of n decodes runs the graph
  of the smallest captured size >= n, its extra rows padded so they do
  nothing (slot -1: no cache write; context length 0: attention reads no key;
  a Mamba layer's state slot: the spare one, which no sequence holds);
- launch shapes must not depend on data: the Triton backend reads nothing
  back from the device, and the split count of decode attention is fixed at
  capture from the longest allowed context (`max_model_len`).

Only pure-decode steps are replayed; steps with prefill chunks, or more
sequences than the largest capture, run the model eagerly. The reference
attention backend reads host-side lengths, so graphs are only for the Triton
backend, which the engine selects on CUDA.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

import torch
from torch import nn

from pagoda.engine.attention import AttentionMetadata

ModelForward = Callable[[torch.Tensor, torch.Tensor, AttentionMetadata], torch.Tensor]


def capture_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, then every multiple of 8 up to max_num_seqs (and max_num_seqs itself).

    Multiples of 8 cap the padding waste at 7 rows, at most 1/8 of a large
    batch, while keeping captures (each costs a warm-up, memory for its
    activations and a few ms of start-up) to about max_num_seqs / 8.
    """
    sizes = [s for s in (1, 2, 4) if s < max_num_seqs] + list(range(8, max_num_seqs, 8))
    return sorted(set(sizes) | {max_num_seqs})


def padded_size(num_seqs: int, sizes: list[int]) -> int | None:
    """The smallest captured size that holds num_seqs, or None when none does."""
    i = bisect.bisect_left(sizes, num_seqs)
    return sizes[i] if i < len(sizes) else None


class StaticDecodeInputs:
    """The fixed-address tensors a captured decode step reads, and the metadata views over them."""

    def __init__(self, max_batch: int, max_blocks_per_seq: int, max_seq_len: int, device: torch.device,
                 num_groups: int = 1, spare_state_slot: int | None = None) -> None:
        self.max_seq_len = max_seq_len
        self.spare_state_slot = spare_state_slot
        # Recurrent layers' state slot of each row (padding: the spare slot).
        self.state_slots = (None if spare_state_slot is None else
                            torch.full((max_batch,), spare_state_slot, dtype=torch.long, device=device))
        self.input_ids = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.positions = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.seq_lens = torch.zeros(max_batch, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(max_batch + 1, dtype=torch.int32, device=device)
        # Per KV-cache group: its slot mapping and block tables.
        self.slot_mappings = [torch.full((max_batch,), -1, dtype=torch.long, device=device) for _ in range(num_groups)]
        self.block_tables = [torch.zeros(max_batch, max_blocks_per_seq, dtype=torch.int32, device=device)
                             for _ in range(num_groups)]

    def meta(self, batch: int) -> AttentionMetadata:
        """Metadata for `batch` decode rows; max_seq_len is the capture-time bound, not a measured length."""
        metas = [AttentionMetadata(
            slot_mapping=slots[:batch],
            query_start_loc=self.query_start_loc[: batch + 1],
            seq_lens=self.seq_lens[:batch],
            block_tables=tables[:batch],
            num_decodes=batch,
            max_query_len=1,
            max_seq_len=self.max_seq_len,
            query_lens_host=[1] * batch,
            seq_lens_host=[self.max_seq_len] * batch,
            state_slots=None if self.state_slots is None else self.state_slots[:batch],
            state_slots_host=None if self.state_slots is None else [self.spare_state_slot] * batch,
        ) for slots, tables in zip(self.slot_mappings, self.block_tables)]
        if len(metas) > 1:
            metas[0].groups = metas
        return metas[0]

    def fill(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, batch: int) -> None:
        """Copies a step of n <= batch decodes in; rows n..batch become inert padding."""
        n = input_ids.shape[0]
        width = meta.block_tables.shape[1]
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.seq_lens[:n].copy_(meta.seq_lens)
        for g, (slots, tables) in enumerate(zip(self.slot_mappings, self.block_tables)):
            group = meta.for_group(g)
            slots[:n].copy_(group.slot_mapping)
            tables[:n, :width].copy_(group.block_tables)
            slots[n:batch].fill_(-1)
        # Padding: no cache write, no key read. Stale table entries past a row's
        # length are never read, so the tables need no clearing.
        self.input_ids[n:batch].zero_()
        self.positions[n:batch].zero_()
        self.seq_lens[n:batch].zero_()
        if self.state_slots is not None:
            self.state_slots[:n].copy_(meta.state_slots)
            self.state_slots[n:batch].fill_(self.spare_state_slot)


class DecodeCudaGraphs:
    """A drop-in for the model's forward that replays a captured graph for pure-decode steps."""

    def __init__(
        self, model: nn.Module, max_num_seqs: int, max_blocks_per_seq: int, max_model_len: int, device: torch.device,
        num_groups: int = 1, spare_state_slot: int | None = None,
    ) -> None:
        self.model = model
        self.sizes = capture_sizes(max_num_seqs)
        self.inputs = StaticDecodeInputs(self.sizes[-1], max_blocks_per_seq, max_model_len, device, num_groups,
                                         spare_state_slot)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self._capture_all()

    @torch.inference_mode()
    def _capture_all(self) -> None:
        # Largest first: later (smaller) captures reuse the shared pool's blocks.
        pool = None
        for batch in reversed(self.sizes):
            meta = self.inputs.meta(batch)
            args = (self.inputs.input_ids[:batch], self.inputs.positions[:batch], meta)
            self.model(*args)  # warm-up outside the graph: Triton compiles, cuBLAS picks its kernels
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[batch] = self.model(*args)
            pool = graph.pool()
            self.graphs[batch] = graph
        torch.cuda.synchronize()

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        fits = meta.num_decodes == meta.num_seqs and meta.block_tables.shape[1] <= self.inputs.block_tables[0].shape[1]
        batch = padded_size(meta.num_seqs, self.sizes) if fits else None
        if batch is None:
            return self.model(input_ids, positions, meta)
        self.inputs.fill(input_ids, positions, meta, batch)
        self.graphs[batch].replay()
        # Valid until the next replay, which overwrites the shared output: callers consume it first.
        return self.outputs[batch][: meta.num_seqs]


def decode_forward(
    model: nn.Module, device: torch.device, enforce_eager: bool, max_num_seqs: int, max_model_len: int, block_size: int,
    num_groups: int = 1, spare_state_slot: int | None = None,
) -> ModelForward:
    """The callable a runner should use for its forward passes: graphs on CUDA unless enforce_eager;
    `num_groups` KV-cache groups, each with block tables of its own; `spare_state_slot`: the recurrent
    layers' slot that padding rows write (None: the model has no such layers)."""
    if device.type != "cuda" or enforce_eager:
        return model
    max_blocks = -(-max_model_len // block_size)
    return DecodeCudaGraphs(model, max_num_seqs, max_blocks, max_model_len, device, num_groups, spare_state_slot)
