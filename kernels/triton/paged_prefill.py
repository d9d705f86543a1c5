"""Paged attention for prefill and extend: causal varlen attention of new tokens over their whole context.

A sequence's new tokens are the last q_len of its seq_len; the first
seq_len - q_len keys are already in the cache (prefix-cache hits, earlier
chunks of a chunked prefill) and the new ones were just stored, so one
kernel reads all keys through the block table and covers fresh prefills,
prefix hits and chunked prefill alike.

A tile packs (token, head) pairs: TOKENS consecutive new tokens times the
GROUP query heads of one KV head, so each K/V tile loaded serves the whole
GQA group. Prefill is compute-bound at useful lengths (intensity ~ the tile
height in FLOPs per byte), so what matters is keeping tensor cores busy:
tiles of 64 rows, keys only up to the causal frontier of the tile's last
token (about half the score matrix), the causal mask computed only on the
key tiles that cross the diagonal, and the heaviest tiles (last ones of a
sequence, which see the most keys) launched first.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels.triton.attention_tile import LOG2E, attend_range, check_layout, finish, initial_state
from pagoda.kernels.triton.launch import WIDEST_FULL_TILE_DIM, block_for, exact_dot, key_tile


@triton.jit
def _prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, tables_ptr, query_start_ptr, seq_lens_ptr, out_ptr, limits_ptr, sinks_ptr,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_tb, stride_cb, stride_ct, stride_ch,
    first_seq, block_size, head_dim, qk_scale_log2, window, softcap_log2,
    GROUP: tl.constexpr, TOKENS: tl.constexpr, HAS_WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
    HAS_LIMITS: tl.constexpr, HAS_SINKS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EXACT: tl.constexpr,
):
    tile = tl.num_programs(0) - 1 - tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = first_seq + tl.program_id(2)
    q_start = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + seq)

    rows = tl.arange(0, BLOCK_M)
    token = tile * TOKENS + rows // GROUP
    heads = kv_head * GROUP + rows % GROUP
    row_mask = (rows < TOKENS * GROUP) & (token < q_len)
    q_pos = seq_len - q_len + token
    first_pos = seq_len - q_len + tile * TOKENS
    stop = tl.minimum(first_pos + TOKENS, seq_len)
    q_limit = q_pos
    if HAS_LIMITS:  # image tokens that see their whole image: keys up to the farthest limit of the tile
        q_limit = tl.load(limits_ptr + q_start + token, mask=row_mask, other=0)
        q_limit = tl.where(row_mask, tl.maximum(q_limit, q_pos), q_pos)
        stop = tl.minimum(tl.maximum(stop, tl.max(tl.where(row_mask, q_limit, 0), axis=0) + 1), seq_len)
    start = 0
    if HAS_WINDOW:
        start = tl.maximum(first_pos - window + 1, 0)
    # A tile past this sequence's tokens (grids cover the longest one) has nothing to do.
    stop = tl.where(tile * TOKENS < q_len, stop, start)

    dims = tl.arange(0, BLOCK_D)
    io_mask = row_mask[:, None] & (dims < head_dim)[None, :]
    q_rows = (q_start + token).to(tl.int64)
    q = tl.load(q_ptr + q_rows[:, None] * stride_qt + heads[:, None] * stride_qh + dims[None, :], mask=io_mask, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    m_i, l_i = initial_state(sinks_ptr, heads, row_mask, HAS_SINKS, BLOCK_M)
    table = tables_ptr + seq.to(tl.int64) * stride_tb
    masked_from = start
    if not HAS_WINDOW:
        # Key tiles wholly at or before the tile's first token are visible to every row: no mask work.
        masked_from = start + tl.maximum(first_pos + 1 - start, 0) // BLOCK_N * BLOCK_N
        masked_from = tl.minimum(masked_from, stop)
        acc, m_i, l_i = attend_range(
            acc, m_i, l_i, q, q_pos, q_limit, k_cache_ptr, v_cache_ptr, table, kv_head * stride_ch,
            start, masked_from, block_size, stride_cb, stride_ct, head_dim, qk_scale_log2, window, softcap_log2,
            False, False, SOFTCAP, BLOCK_N, BLOCK_D, EXACT,
        )
    acc, m_i, l_i = attend_range(
        acc, m_i, l_i, q, q_pos, q_limit, k_cache_ptr, v_cache_ptr, table, kv_head * stride_ch,
        masked_from, stop, block_size, stride_cb, stride_ct, head_dim, qk_scale_log2, window, softcap_log2,
        True, HAS_WINDOW, SOFTCAP, BLOCK_N, BLOCK_D, EXACT,
    )
    out = finish(acc, l_i).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + q_rows[:, None] * stride_ot + heads[:, None] * stride_oh + dims[None, :], out, mask=io_mask)


def paged_attention_prefill_varlen(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    max_query_len: int,
    scale: float,
    sliding_window: int | None = None,
    *,
    softcap: float = 0.0,
    first_seq: int = 0,
    num_seqs: int | None = None,
    out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int = 2,
    key_limits: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sequences first_seq .. first_seq + num_seqs of a batch; their tokens' rows of out are written.

    q: [T, Hq, D] holds the whole batch's new tokens, sequence i's at rows
    query_start_loc[i] .. query_start_loc[i + 1]; seq_lens [S] are context
    lengths including the new tokens; block_tables [S, max_blocks].
    Tiles default to 64 x 64 for 16-bit caches; fp32 runs its dots on FMA
    units (see launch.exact_dot), whose operands live in registers, so it gets
    32 x 32 to stay clear of register spills, as do head dims above 128 (Gemma's
    256), whose q and accumulator tiles would otherwise spill on sm_90; past 256 (DeepSeek's
    576-wide latent, padded to 1024) tiles are 16 x 16 over 8 warps.
    `key_limits` [T] int32, given: the last key position each new token may see (its own position,
    or the end of its image where an image attends to itself both ways, Gemma 3). `sinks` [Hq] fp32:
    attention-sink logits (GPT-OSS).
    """
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    _, block_size, num_kv_heads, _ = k_cache.shape
    check_layout(q, k_cache, v_cache)
    group = num_q_heads // num_kv_heads
    if num_seqs is None:
        num_seqs = seq_lens.shape[0] - first_seq
    if out is None:
        out = torch.empty_like(q)
    exact = exact_dot(q.dtype)
    wide = block_for(head_dim) > WIDEST_FULL_TILE_DIM
    default_tile = 16 if wide else 32 if q.dtype == torch.float32 or head_dim > 128 else 64
    num_warps = num_warps or (8 if wide else 4)
    block_m = max(block_m or default_tile, block_for(group, 16))
    block_n = key_tile(block_n or default_tile)
    tokens = block_m // group
    if num_seqs == 0 or max_query_len == 0:
        return out
    _prefill_kernel[(triton.cdiv(max_query_len, tokens), num_kv_heads, num_seqs)](
        q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, out,
        key_limits if key_limits is not None else seq_lens, sinks if sinks is not None else seq_lens,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        first_seq, block_size, head_dim, scale * LOG2E, sliding_window or 0, softcap * LOG2E,
        GROUP=group, TOKENS=tokens, HAS_WINDOW=sliding_window is not None, SOFTCAP=softcap > 0,
        HAS_LIMITS=key_limits is not None, HAS_SINKS=sinks is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_for(head_dim), EXACT=exact,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out


def paged_attention_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_len: int,
    scale: float,
    sliding_window: int | None = None,
    softcap: float = 0.0,
    key_limits: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """One sequence, with the reference's signature: q [q_len, Hq, D], block_table [max_blocks]."""
    q_len = q.shape[0]
    dev = q.device
    return paged_attention_prefill_varlen(
        q, k_cache, v_cache, block_table.view(1, -1),
        torch.tensor([0, q_len], dtype=torch.int32, device=dev),
        torch.tensor([seq_len], dtype=torch.int32, device=dev),
        q_len, scale, sliding_window, softcap=softcap, key_limits=key_limits, sinks=sinks,
    )
