"""The weight-only integer GEMM (W4A16, W8A16) against its reference: 4 and 8 bits, symmetric and
asymmetric zero points, groups that do and do not span a K tile, channel-wise scales, GPTQ's
act-order (a permuted g_idx), fp16 scales under bf16 activations, batch sizes on both sides of
the tile switch, strided and 3-D inputs."""

from __future__ import annotations

import pytest
import torch

import pagoda.kernels.triton as kernels
from pagoda.engine.layers.int_quant import pack_along_rows, quantize_int_groups
from pagoda.kernels import reference
from tests.kernels.conftest import DEVICE
from tests.kernels.numerics import assert_close

pytestmark = pytest.mark.usefixtures("poisoned")

# (rows of x, out features, in features, bits, group size, symmetric, act-order)
SHAPES = [
    (1, 256, 512, 4, 128, True, False),
    (7, 200, 256, 4, 128, False, False),
    (33, 96, 256, 8, 32, False, False),
    (3, 40, 64, 4, 16, True, True),
    (20, 64, 96, 8, -1, True, False),
    (5, 72, 192, 4, 64, False, True),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _quantized(n: int, k: int, bits: int, group_size: int, symmetric: bool, act_order: bool, seed: int,
               scale_dtype: torch.dtype = torch.float32) -> tuple:
    g = torch.Generator().manual_seed(seed)
    q, scales, zeros = quantize_int_groups(torch.randn(n, k, generator=g) / k**0.5, bits, group_size, symmetric)
    g_idx = None
    if act_order:  # columns in a random order: column k belongs to the group its rank falls in
        size = k if group_size == -1 else group_size
        g_idx = (torch.randperm(k, generator=g) // size).to(torch.int32).to(DEVICE)
    return (pack_along_rows(q, bits).to(DEVICE), scales.to(scale_dtype).to(DEVICE), zeros.to(DEVICE), g_idx,
            bits, k if group_size == -1 else group_size)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_int_linear_matches_reference(shape: tuple, dtype: torch.dtype) -> None:
    m, n, k, bits, group_size, symmetric, act_order = shape
    weights = _quantized(n, k, bits, group_size, symmetric, act_order, seed=m + n)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(k)).to(DEVICE, dtype)
    assert_close(kernels.int_linear(x, *weights), reference.int_linear(x, *weights))


def test_fp16_scales_under_bf16_activations() -> None:
    """GPTQ and AWQ checkpoints ship fp16 scales; a bf16 model keeps them as they are."""
    weights = _quantized(64, 128, 4, 32, False, False, seed=3, scale_dtype=torch.float16)
    x = torch.randn(9, 128, generator=torch.Generator().manual_seed(4)).to(DEVICE, torch.bfloat16)
    assert_close(kernels.int_linear(x, *weights), reference.int_linear(x, *weights))


def test_int_linear_of_strided_3d_input_with_bias() -> None:
    weights = _quantized(48, 64, 4, 16, False, False, seed=5)
    g = torch.Generator().manual_seed(6)
    wide = torch.randn(2, 3, 80, generator=g).to(DEVICE)
    bias = torch.randn(48, generator=g).to(DEVICE)
    x = wide[..., :64]
    out = kernels.int_linear(x, *weights, bias)
    assert out.shape == (2, 3, 48)
    assert_close(out, reference.int_linear(x, *weights, bias))


def test_int_linear_of_no_rows() -> None:
    weights = _quantized(32, 64, 4, 32, True, False, seed=7)
    assert kernels.int_linear(torch.empty(0, 64, device=DEVICE), *weights).shape == (0, 32)


@pytest.mark.parametrize("bits", [4, 8])
def test_packing_places_column_k_at_its_bits(bits: int) -> None:
    """The layout's definition on one row: column k in word k // (32 / bits), at bit (k % (32 / bits)) * bits."""
    per_word = 32 // bits
    values = torch.arange(2 * per_word).remainder(1 << bits).view(1, -1).to(torch.uint8)
    words = pack_along_rows(values, bits)
    expected = [sum(int(values[0, w * per_word + j]) << (j * bits) for j in range(per_word)) for w in range(2)]
    assert [int(w) % 2**32 for w in words[0]] == expected
    assert torch.equal(reference.int_unpack(words, bits), values.to(torch.int32))


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [4, 8])
def test_group_quantization_round_trips_within_a_step(bits: int, symmetric: bool) -> None:
    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(bits))
    q, scales, zeros = quantize_int_groups(weight, bits, 16, symmetric)
    back = reference.int_dequantize(pack_along_rows(q, bits), scales, zeros, None, bits, 16)
    step = scales.repeat_interleave(16, dim=1)
    assert ((back - weight).abs() <= step / 2 + 1e-6).all()


# bitsandbytes' NF4 values (its `quant_map`): normal-distribution quantiles scaled to [-1, 1].
NF4 = torch.tensor([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                    0.7229568362236023, 1.0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 4, 33])
def test_codebook_weights_match_reference(rows: int, dtype: torch.dtype) -> None:
    """bitsandbytes' 4-bit weights: each integer indexes the codebook, scaled by its group's absmax
    (blocks of 64), at decode and prefill tile sizes; a wrong lookup would not pass for the affine one."""
    g = torch.Generator().manual_seed(rows)
    n, k = 96, 320
    q = torch.randint(0, 16, (n, k), generator=g)
    scales = torch.rand(n, k // 64, generator=g) + 0.5
    zeros = torch.full((n, k // 64), 8, dtype=torch.uint8)
    weights = (pack_along_rows(q, 4).to(DEVICE), scales.to(DEVICE), zeros.to(DEVICE), None, 4, 64)
    x = torch.randn(rows, k, generator=g).to(DEVICE, dtype)
    codebook = NF4.to(DEVICE)
    got = kernels.int_linear(x, *weights, codebook=codebook)
    assert_close(got, reference.int_linear(x, *weights, codebook=codebook))
    expected = x.float() @ (NF4[q] * scales.repeat_interleave(64, dim=1)).to(DEVICE).T
    assert_close(got, expected.to(dtype))
