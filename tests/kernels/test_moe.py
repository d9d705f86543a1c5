"""The fused mixture-of-experts kernel against its reference, and the expert sort it runs on."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import pagoda.kernels.triton as kernels
from pagoda.engine.layers.fp8 import WHOLE, quantize_fp8_blocks
from pagoda.engine.layers.int_quant import FP4_VALUES, pack_along_rows, quantize_int_groups
from pagoda.kernels import reference
from pagoda.kernels.triton.moe import sort_by_expert
from tests.kernels.conftest import DEVICE
from tests.kernels.numerics import assert_close, chain_tolerance

pytestmark = pytest.mark.usefixtures("poisoned")

# (tokens, experts, top_k, hidden, expert intermediate): decode-sized and prefill-sized batches
# (the latter past the small-tile threshold), unused experts, one expert, every expert chosen,
# and dimensions that are not multiples of the tiles.
SHAPES = [
    (1, 8, 2, 64, 48),
    (5, 4, 4, 80, 96),
    (9, 1, 1, 32, 40),
    (40, 16, 3, 96, 72),
    (150, 6, 2, 64, 128),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _inputs(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, ...]:
    tokens, experts, top_k, hidden, inter = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g)
    w13 = torch.randn(experts, 2 * inter, hidden, generator=g) / hidden**0.5
    w2 = torch.randn(experts, hidden, inter, generator=g) / inter**0.5
    logits = torch.randn(tokens, experts, generator=g)
    weights, ids = torch.softmax(logits, -1).topk(top_k, dim=-1)
    return (x.to(DEVICE, dtype), w13.to(DEVICE, dtype), w2.to(DEVICE, dtype), weights.to(DEVICE), ids.to(DEVICE))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fused_moe_matches_reference(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    x, w13, w2, weights, ids = _inputs(shape, dtype, seed=sum(shape))
    out = kernels.fused_moe(x, w13, w2, weights, ids)
    ref = reference.fused_moe(x, w13, w2, weights, ids)
    assert_close(out, ref, rel_tol=chain_tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[4]], ids=str)
def test_fused_moe_with_biases_and_clamped_swiglu(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """GPT-OSS's experts: both GEMMs biased per expert (the second's bias weighted with its output),
    the clamped SwiGLU between them; without either bias the result differs."""
    x, w13, w2, weights, ids = _inputs(shape, dtype, seed=sum(shape) + 7)
    g = torch.Generator().manual_seed(5)
    experts, inter, hidden = w13.shape[0], w13.shape[1] // 2, w2.shape[1]
    biases = (torch.randn(experts, 2 * inter, generator=g).to(DEVICE, dtype),
              torch.randn(experts, hidden, generator=g).to(DEVICE, dtype))
    act = reference.ClampedSwiglu(alpha=1.702, limit=1.0)
    out = kernels.fused_moe(x, w13, w2, weights, ids, biases=biases, clamped=act)
    ref = reference.fused_moe(x, w13, w2, weights, ids, biases=biases, clamped=act)
    assert_close(out, ref, rel_tol=chain_tolerance(dtype))
    for dropped in ((None, biases[1]), (biases[0], None)):
        other = reference.fused_moe(x, w13, w2, weights, ids, biases=dropped, clamped=act)
        assert not torch.allclose(other.float(), ref.float(), atol=1e-2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[3], SHAPES[4]], ids=str)
def test_fused_moe_of_ungated_experts(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """Nemotron-H's experts: w13 holds only up rows, activated as relu(up)^2 (checked token by token
    against the definition), not SwiGLU over the same rows."""
    x, w13, w2, weights, ids = _inputs(shape, dtype, seed=sum(shape) + 11)
    up = w13[:, : w13.shape[1] // 2].contiguous()
    out = kernels.fused_moe(x, up, w2, weights, ids, activation="relu2")
    ref = reference.fused_moe(x, up, w2, weights, ids, activation="relu2")
    assert_close(out, ref, rel_tol=chain_tolerance(dtype))
    definition = torch.stack([
        sum(w * (torch.relu(x[t].float() @ up[e].float().t()).square() @ w2[e].float().t())
            for w, e in zip(weights[t].float(), ids[t].tolist()))
        for t in range(x.shape[0])])
    assert_close(ref.float(), definition, rel_tol=chain_tolerance(dtype))
    assert not torch.allclose(reference.fused_moe(x, up, w2[..., : up.shape[1] // 2].contiguous(), weights, ids).float(),
                              ref.float(), atol=1e-2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[3]], ids=str)
def test_fused_moe_of_geglu_experts(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """Gemma 4's experts: gelu_tanh(gate) * up (checked token by token against the definition), not SwiGLU."""
    x, w13, w2, weights, ids = _inputs(shape, dtype, seed=sum(shape) + 23)
    out = kernels.fused_moe(x, w13, w2, weights, ids, activation="gelu_tanh")
    ref = reference.fused_moe(x, w13, w2, weights, ids, activation="gelu_tanh")
    assert_close(out, ref, rel_tol=chain_tolerance(dtype))
    half = w13.shape[1] // 2

    def expert(t: int, e: int) -> torch.Tensor:
        gate, up = (x[t].float() @ w13[e].float().t()).split(half)
        return (torch.nn.functional.gelu(gate, approximate="tanh") * up) @ w2[e].float().t()

    definition = torch.stack([sum(w * expert(t, e) for w, e in zip(weights[t].float(), ids[t].tolist()))
                              for t in range(x.shape[0])])
    assert_close(ref.float(), definition, rel_tol=chain_tolerance(dtype))
    assert not torch.allclose(reference.fused_moe(x, w13, w2, weights, ids).float(), ref.float(), atol=1e-2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "block"), [(SHAPES[0], (16, 16)), (SHAPES[3], (32, 24)), (SHAPES[4], (128, 128)),
                                              (SHAPES[3], (1, WHOLE))], ids=str)
def test_fused_moe_of_fp8_experts_matches_reference(shape: tuple[int, ...], block: tuple[int, int],
                                                    dtype: torch.dtype) -> None:
    """FP8 experts with block scales (partial blocks where the dims are not multiples) and with
    per-channel scales."""
    x, w13, w2, weights, ids = _inputs(shape, torch.float32, seed=sum(shape) + 1)
    (w13, s13), (w2, s2) = [
        [torch.stack(t) for t in zip(*(quantize_fp8_blocks(w.cpu(), block) for w in stack))] for stack in (w13, w2)]
    w13, s13, w2, s2 = (t.to(DEVICE) for t in (w13, s13, w2, s2))
    x = x.to(dtype)
    out = kernels.fused_moe(x, w13, w2, weights, ids, s13, s2, block)
    ref = reference.fused_moe(x, w13, w2, weights, ids, s13, s2, block)
    assert_close(out, ref, rel_tol=chain_tolerance(dtype))


def test_fused_moe_gathers_rows_of_a_strided_batch() -> None:
    """Hidden states that are a row slice of a wider tensor (a stride above the hidden size)."""
    x, w13, w2, weights, ids = _inputs((6, 4, 2, 32, 24), torch.float32, seed=3)
    wide = torch.zeros(6, 48, device=DEVICE)
    wide[:, :32] = x
    out = kernels.fused_moe(wide[:, :32], w13, w2, weights, ids)
    assert_close(out, reference.fused_moe(x, w13, w2, weights, ids))


def test_fused_moe_of_no_tokens() -> None:
    x, w13, w2, weights, ids = _inputs((0, 4, 2, 32, 24), torch.float32, seed=1)
    assert kernels.fused_moe(x, w13, w2, weights, ids).shape == (0, 32)


@pytest.mark.parametrize("block_m", [1, 4, 16])
def test_sort_by_expert_groups_every_assignment_once(block_m: int) -> None:
    g = torch.Generator().manual_seed(block_m)
    experts, tokens, top_k = 7, 11, 3
    ids = torch.stack([torch.randperm(experts, generator=g)[:top_k] for _ in range(tokens)]).to(DEVICE)
    sorted_rows, tile_expert = sort_by_expert(ids, experts, block_m)
    n = tokens * top_k
    rows = sorted_rows.view(-1, block_m).cpu()
    tile_expert = tile_expert.cpu()
    flat = ids.reshape(-1).cpu()
    seen = []
    for tile, expert in enumerate(tile_expert.tolist()):
        real = rows[tile][rows[tile] < n]
        if expert < 0:
            assert real.numel() == 0, "a tile past the groups holds assignments"
            continue
        assert real.numel() > 0, "a tile of a group holds only padding"
        assert (flat[real.long()] == expert).all(), "a tile mixes experts"
        seen += real.tolist()
    assert sorted(seen) == list(range(n)), "every assignment appears in exactly one tile"
    used = tile_expert[tile_expert >= 0]
    assert (used[:-1] <= used[1:]).all() and (tile_expert[used.numel():] < 0).all(), "groups in expert order, then the rest"


def _int_experts(w13: torch.Tensor, w2: torch.Tensor, bits: int, group_size: int, symmetric: bool):
    """(packed w13, packed w2, IntExperts) of full-precision expert stacks, expert by expert."""
    def stack(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        parts = [quantize_int_groups(e.float().cpu(), bits, group_size, symmetric) for e in w]
        return (torch.stack([pack_along_rows(q, bits) for q, _, _ in parts]).to(DEVICE),
                torch.stack([s for _, s, _ in parts]).to(DEVICE), torch.stack([z for _, _, z in parts]).to(DEVICE))

    (q13, s13, z13), (q2, s2, z2) = stack(w13), stack(w2)
    size13 = w13.shape[2] if group_size == -1 else group_size
    size2 = w2.shape[2] if group_size == -1 else group_size
    return q13, q2, reference.IntExperts(s13, z13, s2, z2, bits, size13, size2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "bits", "group_size", "symmetric"), [
    (SHAPES[0], 4, 16, False), ((40, 16, 3, 128, 64), 4, 64, True), ((150, 6, 2, 64, 128), 8, -1, False),
    ((5, 4, 4, 96, 48), 4, 16, True),
], ids=str)
def test_fused_moe_of_int_experts_matches_reference(shape: tuple[int, ...], bits: int, group_size: int,
                                                    symmetric: bool, dtype: torch.dtype) -> None:
    """GPTQ/AWQ-style experts: groups spanning a K tile or not, channel-wise, 4 and 8 bits."""
    x, w13, w2, weights, ids = _inputs(shape, torch.float32, seed=sum(shape) + 2)
    q13, q2, quant = _int_experts(w13, w2, bits, group_size, symmetric)
    x = x.to(dtype)
    out = kernels.fused_moe(x, q13, q2, weights, ids, int_experts=quant)
    ref = reference.fused_moe(x, q13, q2, weights, ids, int_experts=quant)
    assert_close(out, ref, rel_tol=chain_tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "offset"), [((5, 4, 2, 64, 96), 0), ((150, 6, 2, 64, 128), 0),
                                               ((5, 4, 2, 64, 48), 16), ((150, 6, 2, 64, 72), 8)], ids=str)
def test_fused_moe_of_mxfp4_experts_matches_reference(shape: tuple[int, ...], offset: int, dtype: torch.dtype) -> None:
    """GPT-OSS's MXFP4 experts: FP4 codes looked up in the codebook (no zero points), a power-of-two
    scale per group of 32, with its biases and clamped SwiGLU; random codes over every value. With an
    `offset`, the down projection's columns are a rank's share that begins inside a group (gpt-oss's
    2880 intermediate columns over 4 or 8 ranks)."""
    tokens, experts, top_k, hidden, inter = shape
    x, _, _, weights, ids = _inputs(shape, dtype, seed=sum(shape) + 3)
    g = torch.Generator().manual_seed(3)

    def stack(n: int, k: int, first: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        codes = torch.randint(0, 16, (experts, n, k), generator=g)
        scales = 2.0 ** torch.randint(-4, 0, (experts, n, (first + k - 1) // 32 + 1), generator=g)
        return (torch.stack([pack_along_rows(c, 4) for c in codes]).to(DEVICE), scales.to(DEVICE, torch.bfloat16))

    (q13, s13), (q2, s2) = stack(2 * inter, hidden), stack(hidden, inter, offset)
    codebook = torch.tensor(FP4_VALUES, device=DEVICE)
    quant = reference.IntExperts(s13, None, s2, None, 4, 32, 32, codebook, offset)
    biases = (torch.randn(experts, 2 * inter, generator=g).to(DEVICE, dtype),
              torch.randn(experts, hidden, generator=g).to(DEVICE, dtype))
    act = reference.ClampedSwiglu(alpha=1.702, limit=7.0)
    out = kernels.fused_moe(x, q13, q2, weights, ids, int_experts=quant, biases=biases, clamped=act)
    ref = reference.fused_moe(x, q13, q2, weights, ids, int_experts=quant, biases=biases, clamped=act)
    assert_close(out, ref, rel_tol=chain_tolerance(dtype))
    if offset:
        aligned = dataclasses.replace(quant, w2_group_offset=0)
        assert not torch.allclose(ref.float(), reference.fused_moe(x, q13, q2, weights, ids, int_experts=aligned,
                                                                   biases=biases, clamped=act).float())


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[3], SHAPES[4]], ids=str)
@pytest.mark.parametrize("ranks", [2, 4])
def test_expert_parallel_shares_sum_to_the_whole(shape: tuple[int, ...], ranks: int) -> None:
    """Expert parallelism: each rank runs, through its expert_map, only the assignments to its own
    experts (a contiguous E / ranks of them, its weights alone); the ranks' outputs sum to the
    layer's, and the kernel's share equals the reference's."""
    x, w13, w2, weights, ids = _inputs(shape, torch.float32, seed=7 + sum(shape))
    experts = w13.shape[0]
    if experts % ranks:
        pytest.skip("experts do not divide among the ranks")
    local = experts // ranks
    total = torch.zeros_like(x)
    for rank in range(ranks):
        mapped = torch.arange(experts, dtype=torch.int32) - rank * local
        expert_map = torch.where((mapped >= 0) & (mapped < local), mapped, -1).to(DEVICE)
        mine = slice(rank * local, (rank + 1) * local)
        out = kernels.fused_moe(x, w13[mine].contiguous(), w2[mine].contiguous(), weights, ids, expert_map=expert_map)
        assert_close(out, reference.fused_moe(x, w13[mine], w2[mine], weights, ids, expert_map=expert_map))
        total += out
    assert_close(total, reference.fused_moe(x, w13, w2, weights, ids))


def test_assignments_to_other_ranks_experts_run_no_tile() -> None:
    """Expert -1 (another rank's) gets no tile: its rows sit past every group that runs."""
    ids = torch.tensor([[0, -1], [-1, -1], [1, 0]])
    sorted_rows, tile_expert = sort_by_expert(ids, num_experts=2, block_m=2)
    run = [int(e) for e in tile_expert if e >= 0]
    assert run == [0, 1]
    rows = sorted_rows.view(-1, 2)[: len(run)].flatten().tolist()
    assert sorted(r for r in rows if r < 6) == [0, 4, 5]
