"""Layers that keep a fixed-size state per sequence instead of a KV cache: Mamba-2 mixers, Gated
DeltaNet (linear attention) and LFM2's short convolutions, the recurrent layers of hybrid models.

Each runs a short depthwise causal convolution, then (but LFM2's) a recurrence over its
outputs (kernels/recurrent.py), so each keeps two states per sequence: the
convolution's last `kernel - 1` inputs and the recurrence's matrices. They live
in slots: each running sequence holds one slot (BlockManager assigns it with the
sequence's blocks and takes it back with them), every layer holds its states of
every slot, and a step's metadata says which slot each sequence reads and writes
(`state_slots`). A sequence whose chunk starts at position 0 (a new prompt, or
one recomputed after preemption) starts from zero states, whatever the slot held.

A step's decodes (one token each, first in the batch) run as one batched
recurrence step in place on their slots (kernels/ops.py's *_decode_slots: Triton on
GPU), without a host synchronization, so CUDA graphs capture them; each prompt
chunk runs the recurrence's chunked form from its sequence's states. Prefix-cache
snapshots of the states are other slots of the same tensors (engine/state_cache.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pagoda.engine.attention import AttentionMetadata
from pagoda.kernels import recurrent


class RecurrentMixer(nn.Module):
    """The state handling both recurrent layers share; subclasses define the recurrence (`step` for
    one token of many sequences, `chunk` for many tokens of one) and call `recur` from their forward."""

    def __init__(self, conv_dim: int, conv_kernel: int, conv_bias: bool,
                 conv_loader: Callable[[nn.Parameter, Any], None], conv_silu: bool = True) -> None:
        super().__init__()
        self.conv_dim, self.conv_kernel, self.conv_silu = conv_dim, conv_kernel, conv_silu
        # The depthwise convolution's weight [conv_dim, K] (checkpoints: [conv_dim, 1, K]) and bias.
        self.conv1d = nn.Module()
        self.conv1d.weight = nn.Parameter(torch.empty(conv_dim, conv_kernel), requires_grad=False)
        self.conv1d.bias = nn.Parameter(torch.empty(conv_dim), requires_grad=False) if conv_bias else None
        for param in self.conv1d.parameters():
            param.weight_loader = conv_loader
        # [slots, conv_dim, kernel - 1] and [slots, *state_shape]: bound by bind_recurrent_state.
        self.conv_state = torch.empty(0)
        self.state = torch.empty(0)

    def state_shape(self) -> tuple[int, ...]:
        """One sequence's recurrent state on this rank."""
        raise NotImplementedError

    def step(self, conv: torch.Tensor, inputs: tuple[torch.Tensor, ...], slots: torch.Tensor,
             carried: torch.Tensor) -> torch.Tensor:
        """One token of each of S sequences: conv [S, C]; each sequence's state in self.state[slots], read
        (zero where not `carried`) and updated in place (kernels/ops.py's *_decode_slots)."""
        raise NotImplementedError

    def chunk(self, conv: torch.Tensor, inputs: tuple[torch.Tensor, ...],
              state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L tokens of one sequence: conv [L, C], state [*state_shape] float32."""
        raise NotImplementedError

    def recur(self, conv_in: torch.Tensor, inputs: tuple[torch.Tensor, ...], meta: AttentionMetadata) -> torch.Tensor:
        """Every token's output (float32): conv_in [T, conv_dim] through the convolution, then the recurrence
        with `inputs` (per-token tensors, first dimension T), each sequence from and to its slot's states."""
        weight, bias = self.conv1d.weight, self.conv1d.bias
        outputs: list[torch.Tensor] = []
        decodes = meta.num_decodes
        if decodes:
            slots = meta.state_slots[:decodes]
            # A sequence at its first token (a one-token prompt) starts from zero states, as do graph padding rows.
            carried = meta.seq_lens[:decodes] > 1
            conv_states = torch.where(carried[:, None, None], self.conv_state[slots], 0.0)
            conv, conv_states = recurrent.conv_decode(conv_in[:decodes], conv_states, weight, bias, self.conv_silu)
            self.conv_state.index_copy_(0, slots, conv_states.to(self.conv_state.dtype))
            outputs.append(self.step(conv, tuple(t[:decodes] for t in inputs), slots, carried))
        token = decodes
        for i in range(decodes, meta.num_seqs):
            n, slot = meta.query_lens_host[i], meta.state_slots_host[i]
            conv_state, state = self.conv_state[slot], self.state[slot].float()
            if meta.seq_lens_host[i] == n:  # the prompt starts here
                conv_state, state = torch.zeros_like(conv_state), torch.zeros_like(state)
            conv, conv_state = recurrent.conv_prefill(conv_in[token : token + n], conv_state, weight, bias, self.conv_silu)
            self.conv_state[slot] = conv_state
            y, state = self.chunk(conv, tuple(t[token : token + n] for t in inputs), state)
            self.state[slot] = state.to(self.state.dtype)
            outputs.append(y)
            token += n
        return torch.cat(outputs)


def recurrent_mixers(model: nn.Module) -> list[RecurrentMixer]:
    return [m for m in model.modules() if isinstance(m, RecurrentMixer)]


def _shapes(mixer: RecurrentMixer) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return (mixer.conv_dim, mixer.conv_kernel - 1), mixer.state_shape()


def state_bytes(model: nn.Module, conv_dtype: torch.dtype, state_dtype: torch.dtype) -> int:
    """Bytes one state slot takes over every recurrent layer of the model, on this rank."""
    total = 0
    for mixer in recurrent_mixers(model):
        conv, state = _shapes(mixer)
        total += torch.Size(conv).numel() * conv_dtype.itemsize + torch.Size(state).numel() * state_dtype.itemsize
    return total


def bind_recurrent_state(model: nn.Module, num_slots: int, conv_dtype: torch.dtype, state_dtype: torch.dtype,
                         device: torch.device) -> None:
    """Gives every recurrent layer its states for `num_slots` slots."""
    for mixer in recurrent_mixers(model):
        conv, state = _shapes(mixer)
        mixer.conv_state = torch.zeros(num_slots, *conv, dtype=conv_dtype, device=device)
        mixer.state = torch.zeros(num_slots, *state, dtype=state_dtype, device=device)


def copy_states(mixers: list[RecurrentMixer], pairs: list[tuple[int, int]]) -> None:
    """Copies every recurrent layer's states from slot `source` to slot `target` for each (source, target)
    (prefix-cache snapshots saved and restored, engine/state_cache.py)."""
    if not pairs:
        return
    device = mixers[0].state.device
    sources = torch.tensor([s for s, _ in pairs], device=device)
    targets = torch.tensor([t for _, t in pairs], device=device)
    for mixer in mixers:
        mixer.conv_state.index_copy_(0, targets, mixer.conv_state[sources])
        mixer.state.index_copy_(0, targets, mixer.state[sources])
