"""The fused linear layer (norm or gated prologue, bias, residual epilogue) against its reference: decode row
counts up to and past one row tile, K on both sides of the K tile and off it, N off the column tile."""

from __future__ import annotations

import pytest
import torch

import pagoda.kernels.triton as kernels
from pagoda.kernels import reference
from pagoda.kernels.reference import RowNorm
from pagoda.kernels.triton.skinny_gemm import LinearTiles
from tests.kernels.conftest import DEVICE
from tests.kernels.numerics import assert_close, chain_tolerance

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
pytestmark = pytest.mark.usefixtures("poisoned")
# (rows, out features, in features): one row; a K tail past the 256-wide K tile; a full row tile; two row tiles.
SHAPES = [(1, 40, 80), (3, 24, 300), (16, 64, 512), (20, 24, 64)]
# What surrounds the GEMM: as in a decoder layer (qkv: norm [+ bias]; o_proj: residual; gate_up: norm;
# down: gated + residual), a Gemma-style fp32 norm weight, and the plain GEMM.
EDGES = ["plain", "norm", "norm_bias", "norm_fp32_weight", "residual", "gated_residual"]


def _inputs(edge: str, m: int, n: int, k: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, dict]:
    g = torch.Generator().manual_seed(m * 1000 + n + k)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(DEVICE, dtype)

    x = randn(m, 2 * k if edge.startswith("gated") else k, scale=3.0)
    weight = randn(n, k, scale=k**-0.5)
    options: dict = {}
    if edge.startswith("norm"):
        fp32 = edge == "norm_fp32_weight"
        norm_weight = (torch.rand(k, generator=g) + 0.5).to(DEVICE, torch.float32 if fp32 else dtype)
        options["norm"] = RowNorm(norm_weight, 1e-6, round_normed=not fp32)
    if edge == "norm_bias":
        options["bias"] = randn(n)
    if edge.endswith("residual"):
        options["residual"] = randn(m, n, scale=2.0)
    if edge.startswith("gated"):
        options["gated"] = True
    return x, weight, options


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("edge", EDGES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fused_linear_matches_reference(shape: tuple[int, int, int], edge: str, dtype: torch.dtype) -> None:
    x, weight, options = _inputs(edge, *shape, dtype)
    out = kernels.fused_linear(x, weight, **options)
    # A norm or activation before the GEMM and a residual after it chain three or four roundings.
    assert_close(out, reference.fused_linear(x, weight, **options), chain_tolerance(dtype))


@pytest.mark.parametrize("tiles", [LinearTiles(32, 64, 4, 2), LinearTiles(64, 512, 8, 3)], ids=str)
def test_fused_linear_under_other_tiles(tiles: LinearTiles) -> None:
    """The settings bench.gpu_fused_linear sweeps compute the same: narrow and wide K steps, more columns."""
    x, weight, options = _inputs("gated_residual", 5, 72, 600, torch.float32)
    assert_close(kernels.fused_linear(x, weight, **options, tiles=tiles), reference.fused_linear(x, weight, **options))


def test_fused_linear_of_3d_rows_and_a_strided_input() -> None:
    """Token rows given as [batch, tokens, K] (and a view of wider rows), the residual alike."""
    g = torch.Generator().manual_seed(9)
    wide = torch.randn(2, 3, 100, generator=g).to(DEVICE)
    x, weight = wide[..., :64], torch.randn(32, 64, generator=g).to(DEVICE)
    residual = torch.randn(2, 3, 32, generator=g).to(DEVICE)
    norm = RowNorm(torch.rand(64, generator=g).to(DEVICE) + 0.5, 1e-5)
    out = kernels.fused_linear(x, weight, norm=norm, residual=residual)
    assert out.shape == (2, 3, 32)
    assert_close(out, reference.fused_linear(x, weight, norm=norm, residual=residual))


def test_fused_linear_of_no_rows() -> None:
    weight = torch.randn(16, 32, device=DEVICE)
    assert kernels.fused_linear(torch.empty(0, 64, device=DEVICE), weight, gated=True).shape == (0, 16)


def test_fused_linear_refuses_what_it_cannot_compute() -> None:
    x, weight = torch.randn(2, 32, device=DEVICE), torch.randn(16, 32, device=DEVICE)
    norm = RowNorm(torch.ones(32, device=DEVICE), 1e-6)
    with pytest.raises(ValueError, match="not both"):
        kernels.fused_linear(x, weight, norm=norm, gated=True)
    with pytest.raises(ValueError, match="not both"):
        reference.fused_linear(x, weight, norm=norm, gated=True)
    with pytest.raises(ValueError, match="does not feed"):
        kernels.fused_linear(x, weight, gated=True)  # gated inputs are twice K wide
    with pytest.raises(ValueError, match="residual"):
        kernels.fused_linear(x, weight, residual=torch.zeros(2, 8, device=DEVICE))
    half = x.to(torch.bfloat16), weight.to(torch.bfloat16)
    with pytest.raises(ValueError, match="model dtype"):
        kernels.fused_linear(*half, norm=norm)  # a rounding norm's fp32 weight under bf16 rows
