"""Paged attention kernels (decode with split-K, varlen prefill/extend) against the PyTorch reference.

Cases cover every GQA ratio (1, 2, 4, 7) with every head dim the models use
(32 for the tiny fixtures, 64, 80, 96, 128), the three dtypes, block sizes
that do and do not divide the key tile, ragged block tables, partially
filled last blocks, prefix blocks shared between sequences, sliding windows,
and split counts from none to more splits than there are key tiles.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

import pagoda.kernels.triton as kernels
from pagoda.kernels import reference
from pagoda.kernels.triton import paged_decode
from tests.kernels.conftest import DEVICE
from tests.kernels.numerics import assert_close
from tests.kernels.paged import PagedBatch, make_paged_batch

pytestmark = pytest.mark.usefixtures("poisoned")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
GROUPS = [1, 2, 4, 7]
HEAD_DIMS = [32, 64, 80, 96, 128]
# One case per (group, head dim); dtype, block size, KV heads and split count rotate through their values.
CASES = [
    (group, head_dim, DTYPES[i % 3], [16, 4, 8][i % 3], [1, 2][i % 2], [1, 2, 5, 8][i % 4])
    for i, (group, head_dim) in enumerate(itertools.product(GROUPS, HEAD_DIMS))
]
CASE_IDS = [f"g{g}-d{d}-{str(t).removeprefix('torch.')}-bs{b}-kv{h}-s{s}" for g, d, t, b, h, s in CASES]


def _q(tokens: int, heads: int, head_dim: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    return torch.randn(tokens, heads, head_dim, generator=g).to(DEVICE, dtype)


@pytest.mark.parametrize(("group", "head_dim", "dtype", "block_size", "kv_heads", "num_splits"), CASES, ids=CASE_IDS)
def test_decode(group: int, head_dim: int, dtype: torch.dtype, block_size: int, kv_heads: int, num_splits: int) -> None:
    g = torch.Generator().manual_seed(len(CASE_IDS) * group + head_dim)
    # Ragged lengths, none a multiple of the block size; sequence 1 shares two blocks with sequence 0.
    lens = [2 * block_size + 3, 3 * block_size + 1, 1, 5 * block_size - 1]
    batch = make_paged_batch(
        lens, kv_heads=kv_heads, head_dim=head_dim, block_size=block_size, dtype=dtype, device=DEVICE, g=g,
        shared_prefix_blocks=2,
    )
    q = _q(len(lens), kv_heads * group, head_dim, dtype, g)
    args = (batch.block_tables, batch.seq_lens_tensor(), max(lens), head_dim**-0.5)
    out = kernels.paged_attention_decode(q, batch.k_cache, batch.v_cache, *args, num_splits=num_splits, block_n=16)
    ref = batch.finite()
    assert_close(out, reference.paged_attention_decode(q, ref.k_cache, ref.v_cache, *args))


@pytest.mark.parametrize("fused_merge", [True, False], ids=["merged-by-last-split", "merge-kernel"])
@pytest.mark.parametrize("group", [1, 4, 7])
def test_decode_split_merges(group: int, fused_merge: bool) -> None:
    """Both merges of the split partials against the reference; the fused one leaves every arrival counter
    back at zero (the next launch, or graph replay, counts from there), so a second launch agrees exactly."""
    g = torch.Generator().manual_seed(group)
    lens = [70, 33, 1, 129, 16]
    batch = make_paged_batch(lens, kv_heads=2, head_dim=64, block_size=8, dtype=torch.bfloat16, device=DEVICE, g=g,
                             shared_prefix_blocks=1)
    q = _q(len(lens), 2 * group, 64, torch.bfloat16, g)
    args = (batch.block_tables, batch.seq_lens_tensor(), max(lens), 0.125)
    first = kernels.paged_attention_decode(q, batch.k_cache, batch.v_cache, *args, num_splits=5, block_n=16,
                                           fused_merge=fused_merge)
    ref = batch.finite()
    assert_close(first, reference.paged_attention_decode(q, ref.k_cache, ref.v_cache, *args))
    assert not bool(paged_decode._arrival_counters(q.device).any())
    again = kernels.paged_attention_decode(q, batch.k_cache, batch.v_cache, *args, num_splits=5, block_n=16,
                                           fused_merge=fused_merge)
    assert torch.equal(first, again)


@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("window", [1, 5, 40])
def test_decode_sliding_window(num_splits: int, window: int) -> None:
    g = torch.Generator().manual_seed(window)
    lens = [37, 4, 19]
    batch = make_paged_batch(lens, kv_heads=2, head_dim=64, block_size=8, dtype=torch.float32, device=DEVICE, g=g)
    q = _q(3, 4, 64, torch.float32, g)
    args = (batch.block_tables, batch.seq_lens_tensor(), max(lens), 0.125, window)
    out = kernels.paged_attention_decode(q, batch.k_cache, batch.v_cache, *args, num_splits=num_splits, block_n=16)
    ref = batch.finite()
    assert_close(out, reference.paged_attention_decode(q, ref.k_cache, ref.v_cache, *args))


def test_decode_writes_into_a_view_of_a_larger_output() -> None:
    """The backend hands the decode rows of the step's output; rows past them must stay untouched."""
    g = torch.Generator().manual_seed(1)
    batch = make_paged_batch([9, 30], kv_heads=1, head_dim=32, block_size=4, dtype=torch.float16, device=DEVICE, g=g)
    q = _q(2, 2, 32, torch.float16, g)
    out = torch.full((5, 2, 32), 7.0, dtype=torch.float16, device=DEVICE)
    args = (batch.block_tables, batch.seq_lens_tensor(), 30, 0.2)
    kernels.paged_attention_decode(q, batch.k_cache, batch.v_cache, *args, num_splits=2, block_n=16, out=out[:2])
    ref = batch.finite()
    assert_close(out[:2], reference.paged_attention_decode(q, ref.k_cache, ref.v_cache, *args))
    assert bool((out[2:] == 7.0).all())


FP8_CACHES = [torch.float8_e4m3fn, torch.float8_e5m2]


@pytest.mark.parametrize("q_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cache_dtype", FP8_CACHES, ids=str)
def test_decode_over_an_fp8_cache(cache_dtype: torch.dtype, q_dtype: torch.dtype) -> None:
    """vLLM's kv_cache_dtype fp8: keys and values read as one byte each, widened to the queries' dtype."""
    g = torch.Generator().manual_seed(11)
    lens = [21, 35, 1]
    batch = make_paged_batch(lens, kv_heads=2, head_dim=64, block_size=8, dtype=cache_dtype, device=DEVICE, g=g,
                             shared_prefix_blocks=2)
    q = _q(3, 8, 64, q_dtype, g)
    args = (batch.block_tables, batch.seq_lens_tensor(), max(lens), 0.125)
    out = kernels.paged_attention_decode(q, batch.k_cache, batch.v_cache, *args, num_splits=2, block_n=16)
    ref = batch.finite()
    assert_close(out, reference.paged_attention_decode(q, ref.k_cache, ref.v_cache, *args))


@pytest.mark.parametrize("q_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cache_dtype", FP8_CACHES, ids=str)
def test_prefill_over_an_fp8_cache(cache_dtype: torch.dtype, q_dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(12)
    seq_lens, q_lens = [29, 40], [29, 7]
    batch = make_paged_batch(seq_lens, kv_heads=2, head_dim=32, block_size=8, dtype=cache_dtype, device=DEVICE, g=g,
                             shared_prefix_blocks=2)
    q = _q(sum(q_lens), 4, 32, q_dtype, g)
    starts = torch.tensor([0, 29, 36], dtype=torch.int32, device=DEVICE)
    out = kernels.paged_attention_prefill_varlen(
        q, batch.k_cache, batch.v_cache, batch.block_tables, starts, batch.seq_lens_tensor(), 29, 0.2,
        block_m=32, block_n=16,
    )
    assert_close(out, _reference_varlen(q, batch, q_lens, 0.2, None))


def _reference_varlen(q: torch.Tensor, batch: PagedBatch, q_lens: list[int], scale: float, window: int | None,
                      softcap: float = 0.0, sinks: torch.Tensor | None = None) -> torch.Tensor:
    parts, start = [], 0
    batch = batch.finite()
    for i, (q_len, seq_len) in enumerate(zip(q_lens, batch.seq_lens)):
        parts.append(
            reference.paged_attention_prefill(
                q[start : start + q_len], batch.k_cache, batch.v_cache, batch.block_tables[i], seq_len, scale, window,
                softcap, sinks=sinks,
            )
        )
        start += q_len
    return torch.cat(parts)


@pytest.mark.parametrize(("group", "head_dim", "dtype", "block_size", "kv_heads", "_splits"), CASES, ids=CASE_IDS)
def test_prefill_varlen(group: int, head_dim: int, dtype: torch.dtype, block_size: int, kv_heads: int, _splits: int) -> None:
    g = torch.Generator().manual_seed(7 * group + head_dim)
    # A fresh prefill; an extension whose first two blocks are a prefix-cache hit on sequence 0;
    # a later chunk of a chunked prefill (cached part ends mid-block); a one-token chunk.
    seq_lens = [3 * block_size + 5, 2 * block_size + 9, 4 * block_size + 2, 2 * block_size + 1]
    q_lens = [seq_lens[0], 9, block_size + 3, 1]
    batch = make_paged_batch(
        seq_lens, kv_heads=kv_heads, head_dim=head_dim, block_size=block_size, dtype=dtype, device=DEVICE, g=g,
        shared_prefix_blocks=2,
    )
    q = _q(sum(q_lens), kv_heads * group, head_dim, dtype, g)
    starts = torch.tensor([0, *itertools.accumulate(q_lens)], dtype=torch.int32, device=DEVICE)
    scale = head_dim**-0.5
    out = kernels.paged_attention_prefill_varlen(
        q, batch.k_cache, batch.v_cache, batch.block_tables, starts, batch.seq_lens_tensor(), max(q_lens), scale,
        block_m=32, block_n=16,
    )
    assert_close(out, _reference_varlen(q, batch, q_lens, scale, None))


@pytest.mark.parametrize("window", [1, 6, 100])
@pytest.mark.parametrize("group", [1, 4])
def test_prefill_sliding_window(window: int, group: int) -> None:
    g = torch.Generator().manual_seed(window + group)
    seq_lens, q_lens = [45, 30], [45, 12]
    batch = make_paged_batch(seq_lens, kv_heads=1, head_dim=32, block_size=8, dtype=torch.float32, device=DEVICE, g=g)
    q = _q(sum(q_lens), group, 32, torch.float32, g)
    starts = torch.tensor([0, 45, 57], dtype=torch.int32, device=DEVICE)
    out = kernels.paged_attention_prefill_varlen(
        q, batch.k_cache, batch.v_cache, batch.block_tables, starts, batch.seq_lens_tensor(), 45, 0.2, window,
        block_m=32, block_n=16,
    )
    assert_close(out, _reference_varlen(q, batch, q_lens, 0.2, window))


def test_prefill_subset_of_a_batch_leaves_other_rows_alone() -> None:
    """The backend runs prefill over sequences first_seq.. of a batch whose first rows are decodes."""
    g = torch.Generator().manual_seed(2)
    seq_lens, q_lens = [10, 20, 13], [1, 20, 4]
    batch = make_paged_batch(seq_lens, kv_heads=2, head_dim=32, block_size=4, dtype=torch.bfloat16, device=DEVICE, g=g)
    q = _q(25, 4, 32, torch.bfloat16, g)
    starts = torch.tensor([0, 1, 21, 25], dtype=torch.int32, device=DEVICE)
    out = torch.full_like(q, 3.0)
    kernels.paged_attention_prefill_varlen(
        q, batch.k_cache, batch.v_cache, batch.block_tables, starts, batch.seq_lens_tensor(), 20, 0.2,
        first_seq=1, num_seqs=2, out=out, block_n=16,
    )
    assert bool((out[:1] == 3.0).all())
    assert_close(out[1:], _reference_varlen(q, batch, q_lens, 0.2, None)[1:])


def test_single_sequence_prefill_matches_reference_signature() -> None:
    g = torch.Generator().manual_seed(3)
    batch = make_paged_batch([21], kv_heads=2, head_dim=64, block_size=16, dtype=torch.float16, device=DEVICE, g=g)
    q = _q(6, 4, 64, torch.float16, g)
    out = kernels.paged_attention_prefill(q, batch.k_cache, batch.v_cache, batch.block_tables[0], 21, 0.125)
    ref = batch.finite()
    assert_close(out, reference.paged_attention_prefill(q, ref.k_cache, ref.v_cache, ref.block_tables[0], 21, 0.125))


@pytest.mark.parametrize("window", [None, 6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logit_soft_capping(window: int | None, dtype: torch.dtype) -> None:
    """Gemma 2's cap * tanh(logit / cap), in both kernels (decode split or not, prefill with and without
    a window): scores large enough that the cap bends them, so forgetting it fails."""
    g = torch.Generator().manual_seed(11)
    batch = make_paged_batch([37, 21], kv_heads=2, head_dim=64, block_size=8, dtype=dtype, device=DEVICE, g=g)
    _check_softmax_variant(batch, _q(46, 4, 64, dtype, g) * 4, 0.5, window, softcap=5.0)


def _check_softmax_variant(batch: PagedBatch, q: torch.Tensor, scale: float, window: int | None,
                           **variant: object) -> None:
    """Both kernels with a softmax `variant` (softcap, sinks) against the reference, on a fresh prefill
    of sequence 0 and a 9-token chunk of sequence 1 over its cached start, then decodes (with and
    without splits) of their last tokens; the variant must change the result."""
    q_lens = [batch.seq_lens[0], 9]
    starts = torch.tensor([0, q_lens[0], sum(q_lens)], dtype=torch.int32, device=DEVICE)
    out = kernels.paged_attention_prefill_varlen(
        q, batch.k_cache, batch.v_cache, batch.block_tables, starts, batch.seq_lens_tensor(), q_lens[0], scale, window,
        block_m=32 if "softcap" in variant else 16, block_n=16, **variant)
    want = _reference_varlen(q, batch, q_lens, scale, window, **variant)
    assert_close(out, want)
    assert not torch.allclose(want.float(), _reference_varlen(q, batch, q_lens, scale, window).float(), atol=1e-2)
    decode_q = q[[q_lens[0] - 1, sum(q_lens) - 1]].contiguous()
    args = (batch.block_tables, batch.seq_lens_tensor(), max(batch.seq_lens), scale, window)
    ref = batch.finite()
    for splits in (1, 3):
        got = kernels.paged_attention_decode(decode_q, batch.k_cache, batch.v_cache, *args, num_splits=splits,
                                             block_n=16, **variant)
        assert_close(got, reference.paged_attention_decode(decode_q, ref.k_cache, ref.v_cache, *args, **variant))


@pytest.mark.parametrize("block_n", [8, 48])
def test_key_tiles_below_16_or_not_powers_of_two_are_refused(block_n: int) -> None:
    """Compiled tl.dot takes no reduction extent under 16 (the interpreter would): refused up front."""
    batch = make_paged_batch([20], kv_heads=1, head_dim=32, block_size=4, dtype=torch.float32, device=DEVICE,
                             g=torch.Generator().manual_seed(0))
    q = _q(1, 2, 32, torch.float32, torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="block_n must be a power of two of at least 16"):
        kernels.paged_attention_decode(q, batch.k_cache, batch.v_cache, batch.block_tables, batch.seq_lens_tensor(),
                                       20, 0.1, block_n=block_n)
    starts = torch.tensor([0, 1], dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="block_n must be a power of two of at least 16"):
        kernels.paged_attention_prefill_varlen(q, batch.k_cache, batch.v_cache, batch.block_tables, starts,
                                               batch.seq_lens_tensor(), 1, 0.1, block_n=block_n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_latent_attention_shape_with_the_wide_tiles(dtype: torch.dtype) -> None:
    """DeepSeek's absorbed latent attention: 16 query heads over one 576-wide KV head whose value is
    the key itself (one cache passed as both), through the launchers' own tile choice for head dims
    past 256 (16-key tiles), decode with splits and a chunked prefill."""
    g = torch.Generator().manual_seed(576)
    block_size, lens = 16, [37, 20]
    batch = make_paged_batch(lens, kv_heads=1, head_dim=576, block_size=block_size, dtype=dtype, device=DEVICE, g=g)
    cache = batch.k_cache
    scale = 192**-0.5
    q = _q(len(lens), 16, 576, dtype, g)
    args = (batch.block_tables, batch.seq_lens_tensor(), max(lens), scale)
    ref = batch.finite()
    out = kernels.paged_attention_decode(q, cache, cache, *args, num_splits=2)
    assert_close(out, reference.paged_attention_decode(q, ref.k_cache, ref.k_cache, *args))
    q_lens = [5, 20]
    q = _q(sum(q_lens), 16, 576, dtype, g)
    starts = torch.tensor([0, *itertools.accumulate(q_lens)], dtype=torch.int32, device=DEVICE)
    out = kernels.paged_attention_prefill_varlen(q, cache, cache, batch.block_tables, starts, batch.seq_lens_tensor(),
                                                 max(q_lens), scale)
    assert_close(out, _reference_varlen(q, dataclasses.replace(batch, v_cache=cache), q_lens, scale, None))


@pytest.mark.parametrize("window", [None, 6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_with_key_limits(window: int | None, dtype: torch.dtype) -> None:
    """Image tokens that see their whole image (Gemma 3's bidirectional image attention): a token's
    keys reach its limit, past its own position, while the window still counts back from it. A fresh
    prefill with an image in its middle, and a chunk that ends with one, over a prefix hit."""
    g = torch.Generator().manual_seed(11)
    block_size, seq_lens, q_lens = 4, [29, 23], [29, 10]
    batch = make_paged_batch(seq_lens, kv_heads=2, head_dim=32, block_size=block_size, dtype=dtype, device=DEVICE, g=g)
    q = _q(sum(q_lens), 4, 32, dtype, g)
    limits = []
    for seq_len, q_len, (a, b) in zip(seq_lens, q_lens, [(5, 17), (18, 23)]):
        positions = range(seq_len - q_len, seq_len)
        limits.append(torch.tensor([b - 1 if a <= p < b else p for p in positions], dtype=torch.int32))
    key_limits = torch.cat(limits).to(DEVICE)
    starts = torch.tensor([0, *itertools.accumulate(q_lens)], dtype=torch.int32, device=DEVICE)
    scale = 32**-0.5
    out = kernels.paged_attention_prefill_varlen(
        q, batch.k_cache, batch.v_cache, batch.block_tables, starts, batch.seq_lens_tensor(), max(q_lens), scale,
        window, block_m=16, block_n=16, key_limits=key_limits)
    ref, parts, start = batch.finite(), [], 0
    for i, (q_len, seq_len) in enumerate(zip(q_lens, seq_lens)):
        parts.append(reference.paged_attention_prefill(q[start:start + q_len], ref.k_cache, ref.v_cache,
                                                       ref.block_tables[i], seq_len, scale, window,
                                                       key_limits=limits[i]))
        start += q_len
    expected = torch.cat(parts)
    assert_close(out, expected)
    causal = _reference_varlen(q, batch, q_lens, scale, window)
    assert not torch.allclose(expected.float(), causal.float()), "the limits change what the image tokens see"


@pytest.mark.parametrize("window", [None, 6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_sinks(window: int | None, dtype: torch.dtype) -> None:
    """GPT-OSS's per-head sink logits, a key of value zero in every softmax: both kernels (decode with
    and without splits, where only the first split may count the sink; a chunk over a prefix hit)
    against the reference, whose sinks the GPT-OSS parity tests check against transformers. Sinks
    large enough to take most of the mass, so dropping them fails."""
    g = torch.Generator().manual_seed(7)
    batch = make_paged_batch([37, 21], kv_heads=2, head_dim=64, block_size=8, dtype=dtype, device=DEVICE, g=g)
    q = _q(46, 8, 64, dtype, g)
    _check_softmax_variant(batch, q, 64**-0.5, window, sinks=(torch.randn(8, generator=g) * 2 + 2).to(DEVICE))
