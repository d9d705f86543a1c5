"""The recurrent layers' decode kernels (in place on state slots) against their references."""

from __future__ import annotations

import pytest
import torch

import pagoda.kernels.triton as kernels
from pagoda.kernels import reference
from tests.kernels.conftest import DEVICE
from tests.kernels.numerics import assert_close

pytestmark = pytest.mark.usefixtures("poisoned")


def _slots(seqs: int, total: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct slots for the sequences (some past the first ones), the first sequence not carried."""
    slots = torch.randperm(total, generator=g)[:seqs]
    carried = torch.ones(seqs, dtype=torch.bool)
    carried[0] = False
    return slots.to(DEVICE), carried.to(DEVICE)


def _states(total: int, shape: tuple[int, ...], dtype: torch.dtype, slots: torch.Tensor, carried: torch.Tensor,
            g: torch.Generator) -> torch.Tensor:
    states = torch.randn(total, *shape, generator=g).to(DEVICE, dtype)
    states[slots[~carried]] = float("nan")  # a slot's stale contents: never read where not carried
    return states


def _check(out: torch.Tensor, ref: torch.Tensor, states: torch.Tensor, expected: torch.Tensor, untouched: torch.Tensor,
           slots: torch.Tensor, dtype: torch.dtype) -> None:
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert_close(out, ref, rel_tol=tol)
    assert_close(states[slots].float(), expected[slots].float(), rel_tol=tol)
    others = torch.ones(states.shape[0], dtype=torch.bool)
    others[slots.cpu()] = False
    assert torch.equal(states[others.to(DEVICE)], untouched[others.to(DEVICE)])  # only the batch's slots change


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("seqs", "key_heads", "heads", "key_dim", "value_dim", "per_channel"),
                         [(1, 1, 1, 16, 16, False), (3, 2, 4, 80, 48, False), (5, 4, 4, 128, 64, False),
                          (2, 1, 3, 8, 40, False), (3, 4, 4, 16, 16, True), (2, 2, 2, 80, 48, True)])
def test_gated_delta_decode_slots(seqs: int, key_heads: int, heads: int, key_dim: int, value_dim: int,
                                  per_channel: bool, state_dtype: torch.dtype) -> None:
    """Gated DeltaNet's decay per head, and Kimi Delta Attention's per key channel ([S, H, K])."""
    g = torch.Generator().manual_seed(seqs * 100 + heads)
    total = seqs + 3
    slots, carried = _slots(seqs, total, g)
    q, k = (torch.randn(seqs, key_heads, key_dim, generator=g).to(DEVICE) for _ in range(2))
    v = torch.randn(seqs, heads, value_dim, generator=g).to(DEVICE)
    decay = -torch.rand(seqs, heads, *((key_dim,) if per_channel else ()), generator=g).to(DEVICE) * 2
    beta = torch.rand(seqs, heads, generator=g).to(DEVICE)
    states = _states(total, (heads, key_dim, value_dim), state_dtype, slots, carried, g)
    expected, untouched = states.clone(), states.clone()
    ref = reference.gated_delta_decode_slots(q, k, v, decay, beta, expected, slots, carried)
    out = kernels.gated_delta_decode_slots(q, k, v, decay, beta, states, slots, carried)
    _check(out, ref, states, expected, untouched, slots, state_dtype)


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("seqs", "groups", "heads", "head_dim", "state_dim"),
                         [(1, 1, 1, 16, 16), (3, 2, 8, 64, 128), (4, 1, 4, 80, 48), (2, 4, 4, 24, 8)])
def test_ssd_decode_slots(seqs: int, groups: int, heads: int, head_dim: int, state_dim: int,
                          state_dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(seqs * 100 + heads + 7)
    total = seqs + 3
    slots, carried = _slots(seqs, total, g)
    x = torch.randn(seqs, heads, head_dim, generator=g).to(DEVICE)
    dt = torch.nn.functional.softplus(torch.randn(seqs, heads, generator=g)).to(DEVICE)
    A, D = (-torch.rand(heads, generator=g) * 2).to(DEVICE), torch.randn(heads, generator=g).to(DEVICE)
    B, C = (torch.randn(seqs, groups, state_dim, generator=g).to(DEVICE) for _ in range(2))
    states = _states(total, (heads, head_dim, state_dim), state_dtype, slots, carried, g)
    expected, untouched = states.clone(), states.clone()
    ref = reference.ssd_decode_slots(x, dt, A, B, C, D, expected, slots, carried)
    out = kernels.ssd_decode_slots(x, dt, A, B, C, D, states, slots, carried)
    _check(out, ref, states, expected, untouched, slots, state_dtype)
