"""The PyTorch attention backend: CPU, and any device without Triton.

It uses torch's fused scaled_dot_product_attention (flash/memory-efficient
kernels on CPU) rather than the step-by-step reference in kernels/reference.py,
which exists to check kernels, not to serve. A prefill whose whole context is
new in this step attends straight over its fresh K/V with a causal mask; any
other sequence gathers its context from the paged cache first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pagoda.engine.attention.metadata import AttentionMetadata
from pagoda.kernels import ops
from pagoda.kernels.reference import softmax_with_sinks


def _gather(cache: torch.Tensor, block_tables: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """The first `length` cached tokens of each table's sequence, as `dtype`: [B, Hkv, length, D]."""
    block_size = cache.shape[1]
    pos = torch.arange(length, device=cache.device)
    slots = block_tables[:, pos // block_size].long() * block_size + pos % block_size
    return cache.view(-1, *cache.shape[2:])[slots].transpose(1, 2).to(dtype)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, softcap: float = 0.0,
          attn_mask: torch.Tensor | None = None, is_causal: bool = False,
          sinks: torch.Tensor | None = None) -> torch.Tensor:
    """q: [B, Hq, Q, D], k/v: [B, Hkv, L, D]; grouped-query heads share their KV head. Soft-capped
    logits (Gemma 2) are beyond torch's fused kernel: the scores are formed, capped, masked and
    normalized (with any sinks) here; attention sinks alone (GPT-OSS) ride it as one more key."""
    if softcap <= 0:
        if sinks is not None:
            k, v, attn_mask = _sink_as_key(q, k, v, attn_mask, is_causal, sinks)
            is_causal = False
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                                              enable_gqa=q.shape[1] != k.shape[1])
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    if is_causal:
        attn_mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return (softmax_with_sinks(scores, sinks) @ v.float()).to(q.dtype)


def _sink_as_key(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool,
                 sinks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(k, v, float mask) with a zero key and value appended to every KV head and the mask adding each
    query head's sink logit to that key's score (q . 0 = 0): softmax over [scores, sink], the sink
    attending to nothing, in torch's fused kernel."""
    b, hq, nq, _ = q.shape
    zeros = k.new_zeros(k.shape[0], k.shape[1], 1, k.shape[3])
    if is_causal:
        attn_mask = torch.ones(nq, k.shape[2], dtype=torch.bool, device=q.device).tril(k.shape[2] - nq)
    visible = torch.zeros((), dtype=q.dtype, device=q.device)
    if attn_mask is not None:
        visible = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(~attn_mask, float("-inf"))
    scores = visible.expand(b, hq, nq, k.shape[2])
    sink = sinks.to(q.dtype).view(1, hq, 1, 1).expand(b, hq, nq, 1)
    return torch.cat([k, zeros], dim=2), torch.cat([v, zeros], dim=2), torch.cat([scores, sink], dim=-1)


def _window_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, sliding_window: int | None,
                 q_limit: torch.Tensor | None = None) -> torch.Tensor:
    """Keys up to each query's position (or its `q_limit`, an image seeing its whole self), within the
    window counted back from the position."""
    mask = k_pos <= (q_pos if q_limit is None else q_limit)
    if sliding_window is not None:
        mask &= k_pos > q_pos - sliding_window
    return mask


class TorchAttentionBackend:
    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        sliding_window: int | None,
        softcap: float = 0.0,
        sinks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        ops.store_kv_cache(k, v, k_cache, v_cache, meta.slot_mapping)
        out = torch.empty_like(q)
        nd = meta.num_decodes
        if nd:
            max_len = max(meta.seq_lens_host[:nd])
            keys = _gather(k_cache, meta.block_tables[:nd], max_len, q.dtype)
            values = _gather(v_cache, meta.block_tables[:nd], max_len, q.dtype)
            q_pos = meta.seq_lens[:nd, None].long() - 1
            mask = _window_mask(q_pos, torch.arange(max_len, device=q.device)[None, :], sliding_window)
            out[:nd] = _sdpa(q[:nd, :, None], keys, values, scale, softcap, attn_mask=mask[:, None, None, :],
                             sinks=sinks)[:, :, 0]
        start = nd
        for i in range(nd, meta.num_seqs):
            q_len, seq_len = meta.query_lens_host[i], meta.seq_lens_host[i]
            qi = q[start : start + q_len].transpose(0, 1)[None]
            q_pos = torch.arange(seq_len - q_len, seq_len, device=q.device)[:, None]
            limits = meta.key_limits_host[start : start + q_len] if meta.key_limits_host else None
            q_limit = None
            if limits is not None and any(limit > p for p, limit in enumerate(limits, seq_len - q_len)):
                q_limit = torch.tensor(limits, device=q.device)[:, None]
            # A wholly new context attends over its fresh K/V, unless the cache holds them rounded (FP8),
            # which is what every later step will see.
            if q_len == seq_len and sliding_window is None and k_cache.dtype == q.dtype and q_limit is None:
                ki = k[start : start + q_len].transpose(0, 1)[None]
                vi = v[start : start + q_len].transpose(0, 1)[None]
                res = _sdpa(qi, ki, vi, scale, softcap, is_causal=True, sinks=sinks)
            else:
                ki = _gather(k_cache, meta.block_tables[i : i + 1], seq_len, q.dtype)
                vi = _gather(v_cache, meta.block_tables[i : i + 1], seq_len, q.dtype)
                mask = _window_mask(q_pos, torch.arange(seq_len, device=q.device)[None, :], sliding_window, q_limit)
                res = _sdpa(qi, ki, vi, scale, softcap, attn_mask=mask, sinks=sinks)
            out[start : start + q_len] = res[0].transpose(0, 1)
            start += q_len
        return out
