"""What one model step needs, as plain host lists: built once, shipped to every rank.

The scheduler's decisions become flat token/position/slot lists plus the
attention metadata lists. Keeping them as host lists until the last moment
lets the tensor-parallel driver ship a step to its workers as one int64
tensor (`pack`/`unpack`) instead of pickling sequences, and lets each rank
build its device tensors itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from pagoda.engine.attention import AttentionMetadata

# num_tokens, num_seqs, num_groups, max_blocks, num_decodes, num_logit_rows, num_lora_slots, lora_loads_bytes,
# num_image_rows, num_key_limits, num_rope_positions, num_state_slots, num_state_restores, num_state_saves,
# all_rows
_HEADER = 15


_NUMPY_DTYPES = {torch.int32: np.int32, torch.long: np.int64, torch.float32: np.float32}


def device_tensor(values: Sequence[int | float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host list as a tensor on `device`. Through numpy: a third of torch.tensor's time on long lists (a
    step's slots, a batch's block tables), paid every step before the GPU has work. To a GPU from pinned
    memory, without waiting: a blocking copy first waits for every kernel already queued, which async
    scheduling keeps queued while it prepares the next step."""
    host = torch.from_numpy(np.array(values, dtype=_NUMPY_DTYPES[dtype]))
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


@dataclass
class StepInputs:
    input_ids: list[int]
    positions: list[int]
    slots: list[list[int]]  # per KV-cache group, each token's slot in that group's blocks
    query_lens: list[int]
    seq_lens: list[int]
    # Per KV-cache group, each sequence's table, all padded to one width: [num_seqs, width] (an array, or lists).
    block_tables: list[np.ndarray | list[list[int]]]
    num_decodes: int
    # Rows of the step's hidden states whose logits are needed: sampling rows and
    # prompt-logprob rows, in the order the runner consumes them.
    logit_rows: list[int]
    # LoRA: every token's adapter slot (-1: none; empty when no token has one), and the
    # (slot, name, path) of adapters the driver put in slots for this step, which workers load too.
    lora_slots: list[int] = field(default_factory=list)
    lora_loads: list[tuple[int, str, str]] = field(default_factory=list)
    # Images: the rows whose input embeddings are image features instead of token embeddings, and
    # those features [rows, hidden] (shipped to tensor-parallel workers apart from the packed ints).
    image_rows: list[int] = field(default_factory=list)
    image_features: torch.Tensor | None = None
    # Each token's last visible key position, where some token sees past itself (AttentionMetadata.key_limits).
    key_limits: list[int] = field(default_factory=list)
    # Multimodal RoPE: every token's (temporal, height, width) positions, the three streams one after
    # another, where a prompt chunk of such a model is in the step (empty otherwise).
    rope_positions: list[int] = field(default_factory=list)
    # Recurrent layers: each sequence's state slot (empty for models without such layers), and the state
    # copies between slots and prefix-cache snapshots around the forward pass (engine/state_cache.py).
    state_slots: list[int] = field(default_factory=list)
    state_restores: list[tuple[int, int]] = field(default_factory=list)
    state_saves: list[tuple[int, int]] = field(default_factory=list)
    # Whether every row must run every layer (an embedding request pools its prompt's rows; LoRA masks
    # adapters row by row), not only the logit rows past layers that write no K/V.
    all_rows: bool = False

    def to_device(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        qsl = [0]
        for q in self.query_lens:
            qsl.append(qsl[-1] + q)
        common = dict(
            query_start_loc=device_tensor(qsl, torch.int32, device),
            seq_lens=device_tensor(self.seq_lens, torch.int32, device),
            num_decodes=self.num_decodes,
            max_query_len=max(self.query_lens),
            max_seq_len=max(self.seq_lens),
            query_lens_host=self.query_lens,
            seq_lens_host=self.seq_lens,
        )
        if self.key_limits:
            common.update(key_limits=device_tensor(self.key_limits, torch.int32, device),
                          key_limits_host=self.key_limits)
        if self.state_slots:
            common.update(state_slots=device_tensor(self.state_slots, torch.long, device),
                          state_slots_host=self.state_slots)
        if not self.all_rows:  # the rows the step reads, once each and in order (AttentionMetadata.output_queries)
            common.update(output_rows_host=sorted(set(self.logit_rows)))
        metas = [AttentionMetadata(slot_mapping=device_tensor(slots, torch.long, device),
                                   block_tables=device_tensor(tables, torch.int32, device), **common)
                 for slots, tables in zip(self.slots, self.block_tables)]
        meta = metas[0]
        if len(metas) > 1:
            meta.groups = metas
        ids = device_tensor(self.input_ids, torch.long, device)
        pos = device_tensor(self.rope_positions or self.positions, torch.long, device)
        if self.rope_positions:
            pos = pos.view(3, -1)
        return ids, pos, meta

    def pack(self) -> torch.Tensor:
        """One flat int64 CPU tensor: a header of sizes, then every list."""
        max_blocks = len(self.block_tables[0][0]) if len(self.block_tables[0]) else 0
        loads = json.dumps(self.lora_loads).encode() if self.lora_loads else b""
        header = [len(self.input_ids), len(self.seq_lens), len(self.slots), max_blocks, self.num_decodes,
                  len(self.logit_rows), len(self.lora_slots), len(loads), len(self.image_rows), len(self.key_limits),
                  len(self.rope_positions), len(self.state_slots), len(self.state_restores), len(self.state_saves),
                  int(self.all_rows)]
        flat = [*header, *self.input_ids, *self.positions, *self.query_lens, *self.seq_lens]
        for slots, tables in zip(self.slots, self.block_tables):
            flat.extend(slots)
            flat.extend(np.asarray(tables, dtype=np.int64).ravel().tolist())
        flat.extend(self.logit_rows)
        flat.extend(self.lora_slots)
        flat.extend(loads)
        flat.extend(self.image_rows)
        flat.extend(self.key_limits)
        flat.extend(self.rope_positions)
        flat.extend(self.state_slots)
        for pairs in (self.state_restores, self.state_saves):
            for pair in pairs:
                flat.extend(pair)
        return torch.tensor(flat, dtype=torch.long)

    @classmethod
    def unpack(cls, packed: torch.Tensor) -> StepInputs:
        values = packed.tolist()
        num_tokens, num_seqs, num_groups, max_blocks, num_decodes, num_rows, num_lora_slots, loads_bytes, \
            num_image_rows, num_key_limits, num_rope_positions, num_state_slots, num_restores, num_saves, \
            all_rows = values[:_HEADER]
        pos = _HEADER

        def take(n: int) -> list[int]:
            nonlocal pos
            pos += n
            return values[pos - n : pos]

        def pairs(n: int) -> list[tuple[int, int]]:
            flat = take(2 * n)
            return list(zip(flat[::2], flat[1::2]))

        input_ids, positions = take(num_tokens), take(num_tokens)
        query_lens, seq_lens = take(num_seqs), take(num_seqs)
        slots, tables = [], []
        for _ in range(num_groups):
            slots.append(take(num_tokens))
            tables.append([take(max_blocks) for _ in range(num_seqs)])
        rows, lora_slots = take(num_rows), take(num_lora_slots)
        loads = [tuple(load) for load in json.loads(bytes(take(loads_bytes)))] if loads_bytes else []
        image_rows = take(num_image_rows)
        return cls(input_ids, positions, slots, query_lens, seq_lens, tables, num_decodes, rows, lora_slots, loads,
                   image_rows, key_limits=take(num_key_limits), rope_positions=take(num_rope_positions),
                   state_slots=take(num_state_slots), state_restores=pairs(num_restores), state_saves=pairs(num_saves),
                   all_rows=bool(all_rows))
