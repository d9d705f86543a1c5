"""Mixture-of-experts MLP as two grouped GEMMs over tokens sorted by expert.

A layer with E experts and top-k routing gives T tokens T*k (token, expert)
assignments. They are sorted by expert and each expert's run padded to whole
BLOCK_M tiles, so every tile of rows belongs to one expert: a program loads its
tile's rows (gathered by index, no copy of the activations), multiplies them by
that expert's weight tile and scatters the result back to the assignments'
rows. Each expert's weights are read once per tile of its tokens, never for
experts no token chose: in a decode step of a few tokens that is the whole
saving over a dense MLP of the same size.

The sort is done with tensor ops of fixed output size (no host sync), so a
decode step stays capturable in a CUDA graph; tiles past the last expert's
run see expert -1 and exit.

    gate_up[a] = x[a // k] @ w13[e(a)]^T            (first GEMM, rows gathered per token)
    act        = silu(gate) * up                     (silu_and_mul kernel; GPT-OSS: clamped, with biases;
                                                      Gemma 4: gelu_tanh(gate) * up; ungated experts,
                                                      Nemotron-H's: relu(up)^2)
    down[a]    = weight[a] * act[a] @ w2[e(a)]^T     (second GEMM, routing weight fused)
    out[t]     = sum over the token's k rows of down (fp32)

FP8 experts (block-scaled, as Qwen3-30B-A3B-FP8 ships them) are read as one
byte per weight and dequantized in registers by their expert's block scales;
integer experts (GPTQ, AWQ, compressed-tensors: Qwen3-30B-A3B-GPTQ-Int4) as
packed words, unpacked and scaled by their expert's group scales and zeros, or,
for MXFP4 (GPT-OSS), looked up in FP4's 16 values and scaled by their group's power of two.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels.reference import ClampedSwiglu, IntExperts
from pagoda.kernels.triton.activation import clamped_swiglu_and_mul, gelu_tanh_and_mul, silu_and_mul
from pagoda.kernels.triton.attention_tile import mma
from pagoda.kernels.triton.int_gemm import dequantize_tile
from pagoda.kernels.triton.launch import exact_dot


@triton.jit
def _moe_gemm_kernel(
    a_ptr, w_ptr, c_ptr, weights_ptr, sorted_rows_ptr, tile_expert_ptr, s_ptr, z_ptr, bias_ptr, book_ptr,
    n, k, num_rows, stride_am, stride_we, stride_wn, stride_cm, stride_se, stride_sn, stride_ze, stride_zn,
    stride_be, group_offset,
    TOP_K: tl.constexpr, ROWS_BY_TOKEN: tl.constexpr, MUL_WEIGHT: tl.constexpr, EXACT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    FP8: tl.constexpr, SCALE_ROWS: tl.constexpr, SCALE_COLS: tl.constexpr,
    INT_BITS: tl.constexpr, GROUP_SIZE: tl.constexpr, ONE_GROUP: tl.constexpr, CODEBOOK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    tile = tl.program_id(0)
    expert = tl.load(tile_expert_ptr + tile)
    if expert < 0:
        return
    rows = tl.load(sorted_rows_ptr + tile * BLOCK_M + tl.arange(0, BLOCK_M))
    valid = rows < num_rows
    a_rows = rows // TOP_K if ROWS_BY_TOKEN else rows
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    n_in = offs_n < n
    a_ptrs = a_ptr + a_rows[:, None].to(tl.int64) * stride_am + offs_k[None, :]
    w_rows = w_ptr + expert.to(tl.int64) * stride_we + offs_n[None, :].to(tl.int64) * stride_wn
    if INT_BITS:  # packed integers, dequantized a tile at a time as int_gemm does
        WORDS: tl.constexpr = BLOCK_K // (32 // INT_BITS)
        offs_w = tl.arange(0, WORDS)
        w_ptrs = w_rows + offs_w[:, None]
        s_rows = s_ptr + expert.to(tl.int64) * stride_se + offs_n[None, :].to(tl.int64) * stride_sn
        z_rows = z_ptr + expert.to(tl.int64) * stride_ze + offs_n[None, :].to(tl.int64) * stride_zn
    else:
        w_ptrs = w_rows + offs_k[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, k, BLOCK_K):
        k_in = offs_k < k - k0
        a = tl.load(a_ptrs, mask=valid[:, None] & k_in[None, :], other=0.0)
        if INT_BITS:
            w = dequantize_tile(w_ptrs, s_rows, z_rows, s_ptr, book_ptr, k0, k, offs_k, offs_w, n_in, group_offset,
                                INT_BITS, GROUP_SIZE, False, ONE_GROUP, CODEBOOK, BLOCK_K,
                                BLOCK_N).to(a_ptr.dtype.element_ty)
            w_ptrs += WORDS
        else:
            w = tl.load(w_ptrs, mask=k_in[:, None] & n_in[None, :], other=0.0)
            if FP8:  # dequantized in registers by the expert's block scales, to the activations' dtype
                scale = tl.load(s_ptr + expert.to(tl.int64) * stride_se + (offs_n // SCALE_ROWS)[None, :] * stride_sn
                                + ((k0 + offs_k) // SCALE_COLS)[:, None], mask=k_in[:, None] & n_in[None, :],
                                other=0.0)
                w = (w.to(tl.float32) * scale).to(a_ptr.dtype.element_ty)
            w_ptrs += BLOCK_K
        acc = mma(a, w, acc, EXACT)
        a_ptrs += BLOCK_K
    if HAS_BIAS:
        bias = tl.load(bias_ptr + expert.to(tl.int64) * stride_be + offs_n, mask=n_in, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    if MUL_WEIGHT:
        acc *= tl.load(weights_ptr + rows, mask=valid, other=0.0)[:, None]
    c_ptrs = c_ptr + rows[:, None].to(tl.int64) * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=valid[:, None] & n_in[None, :])


def sort_by_expert(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Assignment rows grouped by expert, each group padded to whole tiles of `block_m`.

    Returns (sorted_rows, tile_expert): sorted_rows[i] is an assignment index
    (token * k + slot) or, for padding, the assignment count; tile_expert[j] is
    the expert of tile j, or -1 past the last group. Sizes depend only on the
    shapes: at most min(E + 1, T*k) groups each waste under one tile. Assignments
    to expert -1 (another rank's) form a last group whose tiles are -1 too: never run.
    """
    flat = topk_ids.reshape(-1).long()
    flat = torch.where(flat < 0, num_experts, flat)
    n = flat.numel()
    counts = torch.zeros(num_experts + 1, dtype=torch.long, device=flat.device).index_add_(
        0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = torch.cumsum(padded, 0)
    order = torch.argsort(flat, stable=True)
    experts = flat[order]
    rank_in_group = torch.arange(n, device=flat.device) - (torch.cumsum(counts, 0) - counts)[experts]
    num_tiles = triton.cdiv(n + min(num_experts + 1, n) * (block_m - 1), block_m)
    sorted_rows = torch.full((num_tiles * block_m,), n, dtype=torch.int32, device=flat.device)
    sorted_rows[(padded_end - padded)[experts] + rank_in_group] = order.to(torch.int32)
    tile_start = torch.arange(num_tiles, device=flat.device) * block_m
    tile_expert = torch.searchsorted(padded_end, tile_start, right=True)
    tile_expert = torch.where((tile_start < padded_end[-1]) & (tile_expert < num_experts), tile_expert, -1)
    tile_expert = tile_expert.to(torch.int32)
    return sorted_rows, tile_expert


def _tiles(rows: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K): small row tiles for decode-sized batches, where each
    expert sees a token or two, larger ones once experts get many rows each."""
    return (16, 64, 64) if rows <= 256 else (64, 64, 32)


def _grouped_gemm(
    a: torch.Tensor, w: torch.Tensor, out: torch.Tensor, sorted_rows: torch.Tensor, tile_expert: torch.Tensor,
    weights: torch.Tensor, top_k: int, rows_by_token: bool, tiles: tuple[int, int, int],
    scale: torch.Tensor | None, block: tuple[int, int] | None,
    zeros: torch.Tensor | None = None, bits: int = 0, group_size: int = 0, codebook: torch.Tensor | None = None,
    group_offset: int = 0, bias: torch.Tensor | None = None,
) -> None:
    """One GEMM over the sorted rows; `scale` with `block` (FP8) or with `bits` and `zeros` or a
    `codebook` (integers);
    `bias` [E, N] added to each expert's outputs (before the routing weight)."""
    block_m, block_n, block_k = tiles
    n, k = w.shape[1], w.shape[2] * (32 // bits if bits else 1)
    grid = (tile_expert.numel(), triton.cdiv(n, block_n))
    s = weights if scale is None else scale  # any pointer when there are no scales
    z = weights if zeros is None else zeros
    _moe_gemm_kernel[grid](
        a, w, out, weights, sorted_rows, tile_expert, s, z, weights if bias is None else bias,
        weights if codebook is None else codebook,
        n, k, out.shape[0], a.stride(0), w.stride(0), w.stride(1), out.stride(0),
        0 if scale is None else scale.stride(0), 0 if scale is None else scale.stride(1),
        0 if zeros is None else zeros.stride(0), 0 if zeros is None else zeros.stride(1),
        0 if bias is None else bias.stride(0), group_offset,
        TOP_K=top_k, ROWS_BY_TOKEN=rows_by_token, MUL_WEIGHT=not rows_by_token, EXACT=exact_dot(a.dtype),
        HAS_BIAS=bias is not None,
        FP8=block is not None, SCALE_ROWS=block[0] if block else 1, SCALE_COLS=block[1] if block else 1,
        INT_BITS=bits, GROUP_SIZE=group_size or 1, CODEBOOK=codebook is not None,
        ONE_GROUP=bool(group_size) and group_size % block_k == 0 and group_offset % block_k == 0,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4,
    )


def fused_moe(
    x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
    w13_scale: torch.Tensor | None = None, w2_scale: torch.Tensor | None = None, block: tuple[int, int] | None = None,
    int_experts: IntExperts | None = None, expert_map: torch.Tensor | None = None,
    biases: tuple[torch.Tensor | None, torch.Tensor | None] | None = None, clamped: ClampedSwiglu | None = None,
    activation: str = "silu",
) -> torch.Tensor:
    """Same contract as `reference.fused_moe`."""
    tokens, top_k = topk_ids.shape
    hidden = w2.shape[1]
    if tokens == 0:
        return torch.empty(0, hidden, dtype=x.dtype, device=x.device)
    if x.stride(-1) != 1 or w13.stride(-1) != 1 or w2.stride(-1) != 1:
        raise ValueError("fused_moe needs unit-stride rows in x and the expert weights")
    tiles = _tiles(tokens * top_k)
    ids = topk_ids if expert_map is None else expert_map[topk_ids]
    sorted_rows, tile_expert = sort_by_expert(ids, w13.shape[0], tiles[0])
    weights = topk_weights.reshape(-1).float().contiguous()
    gate_up = torch.empty(tokens * top_k, w13.shape[1], dtype=x.dtype, device=x.device)
    act_args: tuple = ()
    down_args: tuple = ()
    if int_experts is not None:
        q = int_experts
        act_args = (q.w13_zeros, q.bits, q.w13_group_size, q.codebook)
        down_args = (q.w2_zeros, q.bits, q.w2_group_size, q.codebook, q.w2_group_offset)
        w13_scale, w2_scale = q.w13_scales, q.w2_scales
    b13, b2 = biases or (None, None)
    _grouped_gemm(x, w13, gate_up, sorted_rows, tile_expert, weights, top_k, True, tiles, w13_scale, block, *act_args,
                  bias=b13)
    if activation == "relu2":  # Nemotron-H's relu(up)^2: one elementwise pass between the two grouped GEMMs
        act = torch.relu(gate_up).square_()
    elif activation == "gelu_tanh":
        act = gelu_tanh_and_mul(gate_up)
    else:
        act = silu_and_mul(gate_up) if clamped is None else clamped_swiglu_and_mul(gate_up, clamped)
    # Rows of other ranks' experts are never written: zeros, for the sum over a token's k.
    down = (torch.empty if expert_map is None else torch.zeros)(tokens * top_k, hidden, dtype=x.dtype, device=x.device)
    _grouped_gemm(act, w2, down, sorted_rows, tile_expert, weights, top_k, False, tiles, w2_scale, block, *down_args,
                  bias=b2)
    return down.view(tokens, top_k, hidden).sum(dim=1, dtype=torch.float32).to(x.dtype)
