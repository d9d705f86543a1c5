"""The weight-only FP8 GEMM against its reference: block shapes that do and do not align with the
tiles, partial last blocks, batch sizes on both sides of the tile switch, strided and 3-D inputs."""

from __future__ import annotations

import pytest
import torch

import pagoda.kernels.triton as kernels
from pagoda.engine.layers.fp8 import WHOLE, quantize_fp8_blocks
from pagoda.kernels import reference
from tests.kernels.conftest import DEVICE
from tests.kernels.numerics import assert_close

pytestmark = pytest.mark.usefixtures("poisoned")

# (rows of x, out features, in features, scale block): 128-wide blocks (one scale per column
# of a K tile), small and odd blocks (one per element), shapes with partial last blocks, and
# per-channel scales (one per output row, for any K) at both tile configurations.
SHAPES = [
    (1, 96, 200, (1, WHOLE)),
    (20, 130, 64, (1, WHOLE)),
    (1, 256, 512, (128, 128)),
    (7, 200, 130, (128, 128)),
    (33, 96, 256, (32, 48)),
    (3, 40, 64, (8, 8)),
    (64, 64, 96, (16, 16)),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _weights(n: int, k: int, block: tuple[int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    weight, scale = quantize_fp8_blocks(torch.randn(n, k, generator=g) / k**0.5, block)
    return weight.to(DEVICE), scale.to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fp8_linear_matches_reference(shape: tuple, dtype: torch.dtype) -> None:
    m, n, k, block = shape
    weight, scale = _weights(n, k, block, seed=m + n)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(k)).to(DEVICE, dtype)
    assert_close(kernels.fp8_block_linear(x, weight, scale, block), reference.fp8_block_linear(x, weight, scale, block))


def test_fp8_linear_of_strided_3d_input_with_bias() -> None:
    weight, scale = _weights(48, 64, (16, 16), seed=5)
    g = torch.Generator().manual_seed(6)
    wide = torch.randn(2, 3, 80, generator=g).to(DEVICE)
    bias = torch.randn(48, generator=g).to(DEVICE)
    x = wide[..., :64]
    out = kernels.fp8_block_linear(x, weight, scale, (16, 16), bias)
    assert out.shape == (2, 3, 48)
    assert_close(out, reference.fp8_block_linear(x, weight, scale, (16, 16), bias))


def test_fp8_linear_of_no_rows() -> None:
    weight, scale = _weights(32, 32, (16, 16), seed=7)
    assert kernels.fp8_block_linear(torch.empty(0, 32, device=DEVICE), weight, scale, (16, 16)).shape == (0, 32)


def test_block_quantization_round_trips_within_fp8_precision() -> None:
    """What the fixture writes dequantizes to the original within e4m3's 3-bit mantissa (~6%)."""
    g = torch.Generator().manual_seed(8)
    weight = torch.randn(70, 50, generator=g)
    fp8, scale = quantize_fp8_blocks(weight, (32, 16))
    assert fp8.dtype == torch.float8_e4m3fn and scale.shape == (3, 4)
    back = reference.fp8_block_dequantize(fp8, scale, (32, 16))
    assert ((back - weight).norm() / weight.norm()) < 0.04


def test_per_channel_scales_are_one_per_row() -> None:
    """(1, WHOLE) blocks: a scale per output row, each row's largest entry mapped to e4m3's largest."""
    weight = torch.randn(9, 300, generator=torch.Generator().manual_seed(9))
    fp8, scale = quantize_fp8_blocks(weight, (1, WHOLE))
    assert scale.shape == (9, 1)
    torch.testing.assert_close(scale[:, 0], weight.abs().amax(dim=1) / 448.0)
    assert ((reference.fp8_block_dequantize(fp8, scale, (1, WHOLE)) - weight).norm() / weight.norm()) < 0.04
