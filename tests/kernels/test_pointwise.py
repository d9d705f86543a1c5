"""The row-wise kernels (norms, rotary, activation, KV store) against their references, on fresh random inputs."""

from __future__ import annotations

import pytest
import torch

import pagoda.kernels.triton as kernels
from pagoda.engine.layers.rotary import RotaryEmbedding
from pagoda.engine.model_config import RopeConfig
from pagoda.kernels import reference
from tests.kernels.conftest import DEVICE
from tests.kernels.numerics import assert_close, chain_tolerance

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
pytestmark = pytest.mark.usefixtures("poisoned")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=g).to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [32, 80, 2048])
def test_rms_norm(dtype: torch.dtype, hidden: int) -> None:
    g = _gen(hidden)
    x = _randn(7, hidden, dtype=dtype, g=g)
    w = (torch.rand(hidden, generator=g) + 0.5).to(DEVICE, dtype)
    assert_close(kernels.rms_norm(x, w, 1e-6), reference.rms_norm(x, w, 1e-6))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("residual", [False, True])
def test_rms_norm_with_an_fp32_weight_rounds_once(dtype: torch.dtype, residual: bool) -> None:
    """Gemma's (1 + weight) norms: an fp32 weight multiplies the unrounded row, the result in x's dtype."""
    g = _gen(5)
    x, res = _randn(6, 80, dtype=dtype, g=g), _randn(6, 80, dtype=dtype, g=g)
    w = torch.rand(80, generator=g).to(DEVICE) + 1.5
    if residual:
        out, summed = kernels.fused_add_rms_norm(x, res, w, 1e-6, round_normed=False)
        ref, ref_summed = reference.fused_add_rms_norm(x, res, w, 1e-6, round_normed=False)
        assert_close(summed, ref_summed)
    else:
        out, ref = kernels.rms_norm(x, w, 1e-6, round_normed=False), reference.rms_norm(x, w, 1e-6, round_normed=False)
    assert out.dtype == dtype
    assert_close(out, ref)
    exact = (x + res if residual else x).float()
    assert_close(ref, (exact * torch.rsqrt(exact.pow(2).mean(-1, keepdim=True) + 1e-6) * w).to(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_over_strided_heads(dtype: torch.dtype) -> None:
    """Qwen3's per-head q/k norm gets heads of a fused qkv projection: strided tokens, not viewable as rows."""
    g = _gen(3)
    qkv = _randn(5, 6 * 32 + 40, dtype=dtype, g=g)
    q = qkv[:, 8 : 8 + 6 * 32].reshape(5, 6, 32)
    w = (torch.rand(32, generator=g) + 0.5).to(DEVICE, dtype)
    assert_close(kernels.rms_norm(q, w, 1e-5), reference.rms_norm(q, w, 1e-5))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [48, 1024])
def test_fused_add_rms_norm(dtype: torch.dtype, hidden: int) -> None:
    g = _gen(hidden + 1)
    x, residual = _randn(9, hidden, dtype=dtype, g=g), _randn(9, hidden, dtype=dtype, g=g)
    w = (torch.rand(hidden, generator=g) + 0.5).to(DEVICE, dtype)
    x_before, residual_before = x.clone(), residual.clone()
    out, summed = kernels.fused_add_rms_norm(x, residual, w, 1e-6)
    ref_out, ref_summed = reference.fused_add_rms_norm(x, residual, w, 1e-6)
    assert_close(summed, ref_summed)
    assert_close(out, ref_out)
    assert torch.equal(x, x_before) and torch.equal(residual, residual_before), "inputs must be left alone"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [11, 64, 1400])
@pytest.mark.parametrize("act", ["silu_and_mul", "gelu_tanh_and_mul"])
def test_gated_activation(dtype: torch.dtype, d: int, act: str) -> None:
    x = _randn(6, 2 * d, dtype=dtype, g=_gen(d)) * 3  # well into both tails of the activation
    assert_close(getattr(kernels, act)(x), getattr(reference, act)(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_clamped_swiglu(dtype: torch.dtype) -> None:
    """GPT-OSS's experts' activation, on values well past its clamp on both sides."""
    act = reference.ClampedSwiglu(alpha=1.702, limit=2.5)
    x = _randn(6, 2 * 96, dtype=dtype, g=_gen(96)) * 4
    want = reference.clamped_swiglu_and_mul(x, act)
    assert_close(kernels.clamped_swiglu_and_mul(x, act), want)
    unclamped = reference.clamped_swiglu_and_mul(x, reference.ClampedSwiglu(alpha=1.702, limit=1e4))
    assert not torch.allclose(want.float(), unclamped.float())


def _rope_table(head_dim: int, rope: RopeConfig, partial: float = 1.0, max_pos: int = 4096) -> tuple[torch.Tensor, int]:
    rope = RopeConfig(rope.theta, rope.scaling_type, rope.scaling, partial)
    layer = RotaryEmbedding(head_dim, max_pos, rope)
    return layer.cos_sin_cache.to(DEVICE), layer.rotary_dim


LLAMA3 = RopeConfig(
    500000.0, "llama3",
    {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 512},
)

ROTARY_SHAPES = pytest.mark.parametrize(
    ("head_dim", "heads", "rope", "partial"),
    [
        (32, (4, 2), RopeConfig(), 1.0),
        (64, (8, 1), LLAMA3, 1.0),
        (80, (7, 1), RopeConfig(theta=1e6), 0.5),  # partial rotary: the tail passes through
        (128, (4, 4), LLAMA3, 1.0),
    ],
    ids=["d32", "d64-llama3", "d80-partial", "d128-llama3"],
)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
@ROTARY_SHAPES
def test_rotary(dtype: torch.dtype, is_neox: bool, head_dim: int, heads: tuple[int, int], rope: RopeConfig, partial: float) -> None:
    g = _gen(head_dim + is_neox)
    hq, hkv = heads
    table, rotary_dim = _rope_table(head_dim, rope, partial)
    # q and k as the model hands them over: strided slices of one fused projection.
    qkv = _randn(6, (hq + 2 * hkv) * head_dim, dtype=dtype, g=g)
    q = qkv[:, : hq * head_dim].view(6, hq, head_dim)
    k = qkv[:, hq * head_dim : (hq + hkv) * head_dim].view(6, hkv, head_dim)
    positions = torch.randint(0, table.shape[0], (6,), generator=g).to(DEVICE)
    q_out, k_out = kernels.rotary_embedding(positions, q, k, table, rotary_dim, is_neox)
    q_ref, k_ref = reference.rotary_embedding(positions, q, k, table, rotary_dim, is_neox)
    assert_close(q_out, q_ref)
    assert_close(k_out, k_ref)


def test_rotary_layouts_differ() -> None:
    """Guards the layout switch itself: the same input must rotate differently in the two layouts."""
    table, rotary_dim = _rope_table(32, RopeConfig())
    q, k = torch.randn(3, 2, 32).to(DEVICE), torch.randn(3, 1, 32).to(DEVICE)
    positions = torch.tensor([1, 7, 300], device=DEVICE)
    neox = kernels.rotary_embedding(positions, q, k, table, rotary_dim, True)[0]
    gptj = kernels.rotary_embedding(positions, q, k, table, rotary_dim, False)[0]
    assert not torch.allclose(neox, gptj)


def _projection(tokens: int, hq: int, hkv: int, head_dim: int, dtype: torch.dtype, g: torch.Generator,
                gated: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k and v as a model hands them over: strided views into one fused qkv projection (with `gated`,
    Qwen3.5's query heads interleaved with their gates, so even the heads are strided)."""
    width = (2 if gated else 1) * hq * head_dim
    qkv = _randn(tokens, width + 2 * hkv * head_dim, dtype=dtype, g=g)
    q = qkv[:, :width].view(tokens, hq, -1)[..., :head_dim]
    k = qkv[:, width : width + hkv * head_dim].view(tokens, hkv, head_dim)
    v = qkv[:, width + hkv * head_dim :].view(tokens, hkv, head_dim)
    return q, k, v


def _qk_norm(kind: str, head_dim: int, dtype: torch.dtype, g: torch.Generator) -> reference.QKNorm | None:
    """No norm; Qwen3's (weights in the model dtype, the normalized row rounded first); Gemma's (fp32
    weights around 1, one rounding)."""
    if kind == "none":
        return None
    weight_dtype = dtype if kind == "rounded" else torch.float32
    q_w, k_w = ((torch.rand(head_dim, generator=g) + 0.5).to(DEVICE, weight_dtype) for _ in range(2))
    return reference.QKNorm(q_w, k_w, 1e-6, round_normed=kind == "rounded")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("norm", ["none", "rounded", "fp32"])
@ROTARY_SHAPES
def test_rotate_and_store_kv(dtype: torch.dtype, is_neox: bool, norm: str, head_dim: int, heads: tuple[int, int],
                             rope: RopeConfig, partial: float) -> None:
    """The fused norm + rotary + store against the three ops it replaces: q returned, k (rotated) and v
    in their slots, a padding row's slot (-1) and every other slot left untouched."""
    g = _gen(head_dim + 2 * is_neox + len(norm))
    hq, hkv = heads
    tokens, num_blocks, block_size = 7, 5, 4
    table, rotary_dim = _rope_table(head_dim, rope, partial)
    q, k, v = _projection(tokens, hq, hkv, head_dim, dtype, g, gated=norm == "fp32")
    qk_norm = _qk_norm(norm, head_dim, dtype, g)
    positions = torch.randint(0, table.shape[0], (tokens,), generator=g).to(DEVICE)
    slots = torch.randperm(num_blocks * block_size, generator=g)[:tokens]
    slots[2] = -1
    slots = slots.to(DEVICE)
    cache = torch.full((2, num_blocks, block_size, hkv, head_dim), float("nan"), dtype=dtype, device=DEVICE)
    ref = cache.clone()
    q_out = kernels.rotate_and_store_kv(positions, q, k, v, table, rotary_dim, is_neox, cache[0], cache[1], slots, qk_norm)
    q_ref = reference.rotate_and_store_kv(positions, q, k, v, table, rotary_dim, is_neox, ref[0], ref[1], slots, qk_norm)
    assert_close(q_out, q_ref, rel_tol=chain_tolerance(dtype))
    assert torch.equal(cache.isnan(), ref.isnan())
    written = ~ref.isnan()
    assert_close(cache[written], ref[written], rel_tol=chain_tolerance(dtype))
    assert torch.equal(cache[1][written[1]], ref[1][written[1]])  # v is copied, not computed


@pytest.mark.parametrize("cache_dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=str)
def test_rotate_and_store_kv_into_fp8(cache_dtype: torch.dtype) -> None:
    """An FP8 cache gets the rotated k and the v saturated and rounded as store_kv_cache would store them."""
    g = _gen(11)
    tokens, hq, hkv, head_dim = 6, 4, 2, 32
    table, rotary_dim = _rope_table(head_dim, RopeConfig())
    q, k, v = _projection(tokens, hq, hkv, head_dim, torch.float32, g)
    k.mul_(300.0)  # past e4m3's largest value: saturated, not NaN
    positions = torch.randint(0, table.shape[0], (tokens,), generator=g).to(DEVICE)
    slots = torch.randperm(16, generator=g)[:tokens].to(DEVICE)
    cache = torch.zeros(2, 4, 4, hkv, head_dim, dtype=cache_dtype, device=DEVICE)
    kernels.rotate_and_store_kv(positions, q, k, v, table, rotary_dim, True, cache[0], cache[1], slots)
    _, k_rotated = reference.rotary_embedding(positions, q, k, table, rotary_dim, True)
    ref = torch.zeros_like(cache)
    reference.store_kv_cache(k_rotated, v, ref[0], ref[1], slots)
    assert not cache.float().isnan().any()
    assert torch.equal(cache.float(), ref.float())


def test_rotate_and_store_kv_refuses_mismatched_rows() -> None:
    q, k, v = (torch.zeros(3, 2, 32, device=DEVICE) for _ in range(3))
    table, rotary_dim = _rope_table(32, RopeConfig())
    cache = torch.zeros(2, 2, 4, 2, 32, device=DEVICE)
    with pytest.raises(ValueError, match="one row per token"):
        kernels.rotate_and_store_kv(torch.zeros(3, dtype=torch.long, device=DEVICE), q, k, v, table, rotary_dim, True,
                                    cache[0], cache[1], torch.zeros(2, dtype=torch.long, device=DEVICE))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("kv_heads", "head_dim", "block_size"), [(2, 32, 4), (1, 80, 16), (4, 128, 16)])
def test_store_kv_cache(dtype: torch.dtype, kv_heads: int, head_dim: int, block_size: int) -> None:
    g = _gen(kv_heads * head_dim)
    num_blocks, tokens = 6, 11
    kv = _randn(tokens, 3 * kv_heads * head_dim, dtype=dtype, g=g)  # strided rows, as sliced from qkv
    k = kv[:, kv_heads * head_dim : 2 * kv_heads * head_dim].view(tokens, kv_heads, head_dim)
    v = kv[:, 2 * kv_heads * head_dim :].view(tokens, kv_heads, head_dim)
    slots = torch.randperm(num_blocks * block_size, generator=g)[:tokens]
    slots[3] = -1  # padding: must not be written
    slots = slots.to(DEVICE)
    # Untouched slots keep NaN, so a stray write would show as a finite value where the reference has NaN.
    cache = torch.full((2, num_blocks, block_size, kv_heads, head_dim), float("nan"), dtype=dtype, device=DEVICE)
    ref = cache.clone()
    kernels.store_kv_cache(k, v, cache[0], cache[1], slots)
    reference.store_kv_cache(k, v, ref[0], ref[1], slots)
    assert torch.equal(cache.isnan(), ref.isnan())
    assert torch.equal(cache.nan_to_num(), ref.nan_to_num())


@pytest.mark.parametrize("cache_dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_store_kv_cache_into_fp8(dtype: torch.dtype, cache_dtype: torch.dtype) -> None:
    """Values rounded to the FP8 format, and saturated at its largest (a plain cast would give NaN)."""
    g = _gen(5)
    tokens, kv_heads, head_dim = 9, 2, 32
    k = (_randn(tokens, kv_heads, head_dim, dtype=torch.float32, g=g) * 100).to(dtype)
    v = _randn(tokens, kv_heads, head_dim, dtype=torch.float32, g=g).to(dtype)
    k[0, 0, :4] = torch.tensor([1e5, -1e5, 500.0, -70000.0], dtype=dtype)
    k[1, 0, :6] = torch.tensor([1e-3, -3e-3, 7.8e-3, 2e-5, 127.0, -0.0155], dtype=dtype)  # subnormal, carries
    slots = torch.randperm(4 * 4, generator=g)[:tokens].to(DEVICE)
    cache = torch.zeros(2, 4, 4, kv_heads, head_dim, dtype=cache_dtype, device=DEVICE)
    ref = cache.clone()
    kernels.store_kv_cache(k.to(DEVICE), v.to(DEVICE), cache[0], cache[1], slots)
    reference.store_kv_cache(k.to(DEVICE), v.to(DEVICE), ref[0], ref[1], slots)
    assert not cache.float().isnan().any()
    assert torch.equal(cache.float(), ref.float())
    limit = reference.cache_limit(cache_dtype)
    stored = cache[0].view(-1, kv_heads, head_dim)[slots[0]].float()
    assert stored[0, :2].tolist() == [limit, -limit]
