"""Paged attention for decode: one query token per sequence against its cached context.

Decode is memory-bound: per sequence it reads the whole context's K and V
(2 * L * Hkv * D elements) to do ~4 * L * Hq * D FLOPs, an arithmetic
intensity of 2 * Hq/Hkv FLOPs per element, far under any GPU's
FLOP-to-byte ratio. So the design goals are bytes and parallelism:

- GQA: one program serves all query heads of one KV head (the rows of the
  tile), so each K/V element is read from memory exactly once.
- Split-K (flash-decoding): batch * Hkv programs cannot fill a GPU of 132 SMs
  at small batch, and a single program streaming 32k tokens is latency-bound.
  The context is cut into `num_splits` chunks processed in parallel; each
  writes an unnormalised partial (acc, m, l), and the last split of a
  (sequence, KV head) to finish merges them: an arrival counter per pair,
  incremented with acquire-release order after the partial is stored, says
  which split is last, and that one sets it back to zero for the next launch.
  No second kernel: inside a decode step's CUDA graph a launch costs about as
  much as a short context's attention (`fused_merge=False` keeps the separate
  merge kernel, for comparison). The partials cost B * Hq * splits * (D + 2)
  fp32 writes and reads, negligible next to the cache when each split covers
  >= 256 tokens.

The split count depends only on the batch shape, never on the data: a chunk
is cdiv(seq_len, num_splits) tokens of each sequence, computed on the
device, so one launch configuration serves every step of a captured CUDA
graph whatever the sequence lengths (empty chunks contribute l = 0).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels.triton.attention_tile import LOG2E, NEG_LARGE, attend_range, check_layout, finish, initial_state
from pagoda.kernels.triton.launch import WIDEST_FULL_TILE_DIM, block_for, exact_dot, key_tile, num_sms

# A split shorter than this spends more on its partial and the merge than it saves.
MIN_TOKENS_PER_SPLIT = 256
MAX_SPLITS = 64
# Arrival counters of the fused merge, one per (sequence, KV head) of a launch: allocated once per device
# (a captured graph keeps their address) and zero between launches. Launches on one device run one after
# another on the engine's stream; two launches running at once on two streams would share them.
COUNTER_SLOTS = 1 << 16
_COUNTERS: dict[torch.device, torch.Tensor] = {}


def _arrival_counters(device: torch.device) -> torch.Tensor:
    if device not in _COUNTERS:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            # Zeroed inside a capture, they would live in the graph's pool and be zeroed by its replays.
            raise RuntimeError("the first split decode launch on a device must run before any CUDA graph capture")
        _COUNTERS[device] = torch.zeros(COUNTER_SLOTS, dtype=torch.int32, device=device)
    return _COUNTERS[device]


@triton.jit
def _decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, tables_ptr, seq_lens_ptr, out_ptr, part_acc_ptr, part_ml_ptr, sinks_ptr,
    counters_ptr, stride_qb, stride_qh, stride_ob, stride_oh, stride_tb, stride_cb, stride_ct, stride_ch,
    block_size, head_dim, num_splits, qk_scale_log2, window, softcap_log2,
    GROUP: tl.constexpr, SPLIT: tl.constexpr, FUSED_MERGE: tl.constexpr, HAS_WINDOW: tl.constexpr,
    SOFTCAP: tl.constexpr, HAS_SINKS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EXACT: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(seq_len - window, 0)
    chunk = tl.cdiv(tl.cdiv(seq_len - lo, num_splits), BLOCK_N) * BLOCK_N
    start = lo + split * chunk
    stop = tl.minimum(seq_len, start + chunk)

    rows = tl.arange(0, BLOCK_M)
    heads = kv_head * GROUP + rows
    dims = tl.arange(0, BLOCK_D)
    io_mask = (rows < GROUP)[:, None] & (dims < head_dim)[None, :]
    q = tl.load(q_ptr + seq * stride_qb + heads[:, None] * stride_qh + dims[None, :], mask=io_mask, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    m_i, l_i = initial_state(sinks_ptr, heads, rows < GROUP, HAS_SINKS, BLOCK_M)
    if HAS_SINKS:
        if SPLIT:  # a sink is one key of the whole context: only the first split's partial carries it
            m_i = tl.where(split == 0, m_i, NEG_LARGE)
            l_i = tl.where(split == 0, l_i, 0.0)
    acc, m_i, l_i = attend_range(
        acc, m_i, l_i, q, rows, rows,
        k_cache_ptr, v_cache_ptr, tables_ptr + seq.to(tl.int64) * stride_tb, kv_head * stride_ch,
        start, stop, block_size, stride_cb, stride_ct, head_dim, qk_scale_log2, window, softcap_log2,
        False, False, SOFTCAP, BLOCK_N, BLOCK_D, EXACT,
    )
    if SPLIT:
        # Partials laid out [seq, head, split, ...] so the merge reads each (seq, head) contiguously.
        part = (seq * tl.num_programs(1) * GROUP + heads) * num_splits + split
        tl.store(part_acc_ptr + part[:, None] * head_dim + dims[None, :], acc, mask=io_mask)
        tl.store(part_ml_ptr + part * 2, m_i, mask=rows < GROUP)
        tl.store(part_ml_ptr + part * 2 + 1, l_i, mask=rows < GROUP)
        if FUSED_MERGE:
            tl.debug_barrier()  # every thread's share of the partial stored before this split counts as arrived
            counter = counters_ptr + seq * tl.num_programs(1) + kv_head
            if tl.atomic_add(counter, 1, sem="acq_rel") == num_splits - 1:
                _merge_group(part_acc_ptr, part_ml_ptr, out_ptr, seq, heads, rows < GROUP, tl.num_programs(1) * GROUP,
                             stride_ob, stride_oh, num_splits, head_dim, BLOCK_M, BLOCK_D)
                tl.atomic_xchg(counter, 0)
    else:
        out = finish(acc, l_i).to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + seq * stride_ob + heads[:, None] * stride_oh + dims[None, :], out, mask=io_mask)


@triton.jit
def _merge_group(
    part_acc_ptr, part_ml_ptr, out_ptr, seq, heads, row_mask, num_q_heads, stride_ob, stride_oh, num_splits,
    head_dim, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The output of sequence `seq`'s `heads` from their num_splits partials, combined one split at a time
    (an online softmax over splits; m is in log2 units). Loads bypass L1 (.cg): other SMs wrote them."""
    dims = tl.arange(0, BLOCK_D)
    mask = row_mask[:, None] & (dims < head_dim)[None, :]
    first = seq * num_q_heads + heads
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    m = tl.full((BLOCK_M,), NEG_LARGE, tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    for split in range(0, num_splits):
        part = first * num_splits + split
        m_s = tl.load(part_ml_ptr + part * 2, mask=row_mask, other=NEG_LARGE, cache_modifier=".cg")
        l_s = tl.load(part_ml_ptr + part * 2 + 1, mask=row_mask, other=0.0, cache_modifier=".cg")
        acc_s = tl.load(part_acc_ptr + part[:, None] * head_dim + dims[None, :], mask=mask, other=0.0,
                        cache_modifier=".cg")
        m_new = tl.maximum(m, m_s)
        alpha, beta = tl.exp2(m - m_new), tl.exp2(m_s - m_new)
        acc = acc * alpha[:, None] + acc_s * beta[:, None]
        l_i = l_i * alpha + l_s * beta
        m = m_new
    out = finish(acc, l_i).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + seq * stride_ob + heads[:, None] * stride_oh + dims[None, :], out, mask=mask)


@triton.jit
def _merge_kernel(
    part_acc_ptr, part_ml_ptr, out_ptr, stride_ob, stride_oh, num_splits, head_dim, num_heads,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The merge as a kernel of its own (fused_merge off): one program per sequence and BLOCK_M heads."""
    seq = tl.program_id(0)
    heads = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    _merge_group(part_acc_ptr, part_ml_ptr, out_ptr, seq, heads, heads < num_heads, num_heads, stride_ob, stride_oh,
                 num_splits, head_dim, BLOCK_M, BLOCK_D)


def choose_num_splits(batch: int, num_kv_heads: int, max_seq_len: int, device: torch.device) -> int:
    """Enough programs for about two waves over the SMs, no split under MIN_TOKENS_PER_SPLIT; a power of two.

    Depends on max_seq_len only as an upper bound, so a CUDA graph captured
    with the longest allowed context stays correct (if over-split) for shorter ones.
    """
    if device.type != "cuda":
        return 1
    wanted = triton.cdiv(2 * num_sms(device.index or 0), batch * num_kv_heads)
    useful = triton.cdiv(max_seq_len, MIN_TOKENS_PER_SPLIT)
    return min(MAX_SPLITS, triton.next_power_of_2(max(1, min(wanted, useful))))


def paged_attention_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    max_seq_len: int,
    scale: float,
    sliding_window: int | None = None,
    *,
    softcap: float = 0.0,
    sinks: torch.Tensor | None = None,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int = 2,
    fused_merge: bool = True,
) -> torch.Tensor:
    """q: [B, Hq, D] -> [B, Hq, D]; caches [num_blocks, block_size, Hkv, D]; seq_lens [B] on the device.

    max_seq_len only bounds the split count (see choose_num_splits); `out`
    may be a view into a larger output (the backend's decode rows); `softcap` > 0 caps the
    logits (Gemma 2); `sinks` [Hq] fp32 are attention-sink logits (GPT-OSS). Key tiles are 64 tokens, or 16 over 8 warps for head dims past 256 (DeepSeek's
    576-wide latent, padded to 1024): 64 such keys would not fit sm_90's shared memory. With splits,
    `fused_merge` has the last split of each (sequence, KV head) merge the partials (off: a second kernel).
    """
    batch, num_q_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    check_layout(q, k_cache, v_cache)
    group = num_q_heads // num_kv_heads
    if out is None:
        out = torch.empty_like(q)
    if batch == 0:
        return out
    if num_splits is None:
        num_splits = choose_num_splits(batch, num_kv_heads, max_seq_len, q.device)
    part_acc = part_ml = out  # unused placeholders when there is a single split
    if num_splits > 1:
        part_acc = torch.empty(batch, num_q_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
        part_ml = torch.empty(batch, num_q_heads, num_splits, 2, dtype=torch.float32, device=q.device)
    block_d = block_for(head_dim)
    wide = block_d > WIDEST_FULL_TILE_DIM
    block_n = key_tile(block_n or (16 if wide else 64))
    num_warps = num_warps or (8 if wide else 4)
    block_m = block_for(group, 16)
    fused_merge = fused_merge and num_splits > 1 and batch * num_kv_heads <= COUNTER_SLOTS
    _decode_kernel[(batch, num_kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, seq_lens, out, part_acc, part_ml, out if sinks is None else sinks,
        _arrival_counters(q.device) if fused_merge else seq_lens,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_size, head_dim, num_splits, scale * LOG2E, sliding_window or 0, softcap * LOG2E,
        GROUP=group, SPLIT=num_splits > 1, FUSED_MERGE=fused_merge, HAS_WINDOW=sliding_window is not None,
        SOFTCAP=softcap > 0, HAS_SINKS=sinks is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        EXACT=exact_dot(q.dtype), num_warps=num_warps, num_stages=num_stages,
    )
    if num_splits > 1 and not fused_merge:
        _merge_kernel[(batch, triton.cdiv(num_q_heads, block_m))](
            part_acc, part_ml, out, out.stride(0), out.stride(1), num_splits, head_dim, num_q_heads,
            BLOCK_M=block_m, BLOCK_D=block_d, num_warps=4,
        )
    return out
