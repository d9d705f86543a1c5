"""The inner loop that both paged-attention kernels share: one tile of query rows over a range of cached keys.

A tile's rows are (query token, query head) pairs that all read the same KV
head, so each K/V tile is loaded once for the whole GQA group instead of once
per query head: for decode that divides the dominant traffic, the cache
reads, by the group size. Keys are gathered token by token through the block
table, so any block size works (the memory profiler even uses one block as
long as the whole batch) and a tile may straddle blocks.

Softmax is online (running max m and sum l per row, in base 2 so exp2 is a
single instruction), accumulators fp32. The running max starts at a large
finite negative instead of -inf, so a row that sees only masked keys in a
tile (sliding windows, padding rows) gets exp2(0) = 1 as its rescale factor
rather than NaN, and l stays 0 until a real key arrives.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

NEG_LARGE = tl.constexpr(-1.0e30)
# Scores are scaled by softmax_scale * log2(e) once, so the softmax runs on exp2.
LOG2E = 1.4426950408889634
_LOG2E = tl.constexpr(LOG2E)


def check_layout(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    """The kernels index K and V with one set of strides and load head dims as contiguous vectors."""
    if k_cache.stride() != v_cache.stride() or k_cache.stride(-1) != 1 or q.stride(-1) != 1:
        raise ValueError("caches must share one layout, and q and the caches need contiguous head dims")


@triton.jit
def mma(a, b, acc, EXACT: tl.constexpr):
    """acc + a @ b; EXACT runs it on fp32 operands at IEEE precision (see launch.exact_dot)."""
    if EXACT:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def widen(kv, q, EXACT: tl.constexpr):
    """Cached keys or values in the dtype the dot takes: q's, or fp32 for EXACT dots (an FP8 cache's
    values are widened exactly either way)."""
    if EXACT:
        return kv.to(tl.float32)
    return kv.to(q.dtype)


@triton.jit
def soft_cap(s, qk_scale_log2, softcap_log2):
    """Base-2 scores of raw q.k products `s` whose natural logits z = s * scale are capped to
    cap * tanh(z / cap) (Gemma 2's attention soft-capping); tanh written with exp, which saturates
    cleanly to -1 and 1."""
    z = s * (qk_scale_log2 / softcap_log2)
    return softcap_log2 * (1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0))


@triton.jit
def initial_state(sinks_ptr, heads, mask, HAS_SINKS: tl.constexpr, BLOCK_M: tl.constexpr):
    """The online softmax's (m, l) before any key: empty, or, with attention sinks (GPT-OSS), each
    row's head's sink logit folded in as a key whose value is zero (m = sink, l = 1, acc stays 0), so
    the sink takes its share of the normalization and adds nothing to the output."""
    if HAS_SINKS:
        m_i = tl.load(sinks_ptr + heads, mask=mask, other=0.0).to(tl.float32) * _LOG2E
        return m_i, tl.full((BLOCK_M,), 1.0, tl.float32)
    return tl.full((BLOCK_M,), NEG_LARGE, tl.float32), tl.zeros((BLOCK_M,), tl.float32)


@triton.jit
def attend_range(
    acc, m_i, l_i, q, q_pos, q_limit,
    k_cache_ptr, v_cache_ptr, table_ptr, kv_head_offset, start, stop, block_size,
    stride_cb, stride_ct, head_dim, qk_scale_log2, window, softcap_log2,
    MASK_ROWS: tl.constexpr, HAS_WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EXACT: tl.constexpr,
):
    """Folds keys [start, stop) into (acc, m_i, l_i).

    q: [M, BLOCK_D] in the activations' dtype; keys and values are read in the cache's (which may
    be FP8) and widened to q's, or to fp32 when EXACT; q_pos: [M] absolute position of each
    row's token and q_limit: [M] the last key it may see (q_pos, but the end of its image where
    an image attends to itself bidirectionally), used when MASK_ROWS (the sliding window, counted
    back from q_pos, when HAS_WINDOW); without it every key in range is visible to every row.
    SOFTCAP caps the logits at softcap_log2 / log2(e) (see soft_cap).
    """
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < head_dim
    for n0 in range(start, stop, BLOCK_N):
        pos = n0 + tl.arange(0, BLOCK_N)
        in_range = pos < stop
        block = tl.load(table_ptr + pos // block_size, mask=in_range, other=0).to(tl.int64)
        offs = block * stride_cb + (pos % block_size) * stride_ct + kv_head_offset
        kv_mask = in_range[:, None] & dim_mask[None, :]
        k = widen(tl.load(k_cache_ptr + offs[:, None] + dims[None, :], mask=kv_mask, other=0.0), q, EXACT)
        s = mma(q, tl.trans(k), tl.zeros((q.shape[0], BLOCK_N), tl.float32), EXACT)
        if SOFTCAP:
            s = soft_cap(s, qk_scale_log2, softcap_log2)
        else:
            s = s * qk_scale_log2
        visible = in_range[None, :]
        if MASK_ROWS:
            visible = visible & (pos[None, :] <= q_limit[:, None])
            if HAS_WINDOW:
                visible = visible & (pos[None, :] > q_pos[:, None] - window)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = widen(tl.load(v_cache_ptr + offs[:, None] + dims[None, :], mask=kv_mask, other=0.0), q, EXACT)
        acc = mma(p.to(v.dtype), v, acc * alpha[:, None], EXACT)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def finish(acc, l_i):
    """acc / l, with rows that saw no key (padding) giving 0 instead of 0/0."""
    return acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
