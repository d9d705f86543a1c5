"""The one-pass temperature sampler (Gumbel-max with Philox noise) and its PyTorch reference: both must draw
from softmax(logits / T), pick the selected rows in order, never pick a masked token, and depend on the seed."""

from __future__ import annotations

import pytest
import torch

import pagoda.kernels.triton as kernels
from pagoda.kernels import reference
from tests.kernels.conftest import DEVICE

SAMPLERS = {"triton": kernels.gumbel_sample, "reference": reference.gumbel_sample}
# Chi-square's 0.001 upper quantile at 9 degrees of freedom: a correct sampler exceeds it once in 1000 seeds.
CHI2_9_P001 = 27.88


@pytest.mark.parametrize("impl", SAMPLERS)
def test_draws_follow_the_tempered_softmax(impl: str) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(10, generator=g) * 2
    temperature = 0.7
    draws = 3000
    rows = torch.zeros(draws, dtype=torch.long, device=DEVICE)
    tokens = SAMPLERS[impl](logits.to(DEVICE).unsqueeze(0), rows, torch.full((draws,), temperature, device=DEVICE), 11)
    counts = torch.bincount(tokens.cpu(), minlength=10).double()
    expected = torch.softmax(logits.double() / temperature, 0) * draws
    assert ((counts - expected) ** 2 / expected).sum() < CHI2_9_P001


@pytest.mark.parametrize("impl", SAMPLERS)
def test_rows_temperatures_and_the_vocab_tail(impl: str) -> None:
    """A vocab spanning several tiles with a partial last one: each selected row (in the order given) at a
    near-zero temperature picks its argmax, wherever in the vocab it is; -inf logits are never picked."""
    vocab = 2500
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, vocab, generator=g)
    winners = [0, 1023, 1024, 2047, 2499, 1500]
    for r, w in enumerate(winners):
        logits[r, w] = 40.0
    logits[5, :2000] = float("-inf")  # row 5 may only pick from the tail
    logits[5, 1500] = float("-inf")
    logits[5, 2100] = 5.0
    winners[5] = 2100
    rows = torch.tensor([4, 0, 3, 1, 2, 5], device=DEVICE)
    temps = torch.full((6,), 1e-3, device=DEVICE)
    tokens = SAMPLERS[impl](logits.to(DEVICE), rows, temps, 3)
    assert tokens.tolist() == [winners[r] for r in rows.tolist()]
    hot = SAMPLERS[impl](logits.to(DEVICE), torch.full((200,), 5, device=DEVICE), torch.full((200,), 50.0, device=DEVICE), 4)
    assert bool((hot >= 2000).all()) and 1500 not in hot.tolist() and len(set(hot.tolist())) > 50


@pytest.mark.parametrize("impl", SAMPLERS)
def test_the_seed_alone_decides_the_noise(impl: str) -> None:
    logits = torch.zeros(1, 4096, device=DEVICE)  # uniform: every draw is the noise's argmax
    rows, temps = torch.zeros(16, dtype=torch.long, device=DEVICE), torch.ones(16, device=DEVICE)
    first = SAMPLERS[impl](logits, rows, temps, 7)
    assert torch.equal(first, SAMPLERS[impl](logits, rows, temps, 7))
    assert not torch.equal(first, SAMPLERS[impl](logits, rows, temps, 8))
    assert len(set(first.tolist())) > 12  # rows draw apart from each other
