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


def _gather(k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor, pos: torch.Tensor | int,
            dtype: torch.dtype, sink_key: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys, values) cached for each table's sequence, as `dtype`: [B, Hkv, L, D] each; `pos` [B, L]
    their positions, or an int L for the first L of each; with `sink_key`, one more key of zeros after
    them (see _sdpa), gathered in the same copy. Both caches share one layout, so one set of slots; a
    latent cache that is both (DeepSeek's) is gathered once."""
    block_size = k_cache.shape[1]
    if isinstance(pos, int):
        pos = torch.arange(pos, device=k_cache.device).expand(block_tables.shape[0], pos)
    if sink_key:
        pos = torch.cat([pos, pos[:, :1]], dim=1)
    slots = block_tables.gather(1, pos // block_size).long() * block_size + pos % block_size

    def rows(cache: torch.Tensor) -> torch.Tensor:
        out = cache.view(-1, *cache.shape[2:])[slots].to(dtype)
        if sink_key:
            out[:, -1] = 0
        return out.transpose(1, 2)

    keys = rows(k_cache)
    return keys, keys if v_cache.data_ptr() == k_cache.data_ptr() else rows(v_cache)


def _with_sink_key(x: torch.Tensor) -> torch.Tensor:
    """Fresh keys or values [B, Hkv, L, D] with one more of zeros after them (see _sdpa)."""
    return torch.cat([x, x.new_zeros(*x.shape[:2], 1, x.shape[3])], dim=2)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, softcap: float = 0.0,
          attn_mask: torch.Tensor | None = None, is_causal: bool = False,
          sinks: torch.Tensor | None = None) -> torch.Tensor:
    """q: [B, Hq, Q, D], k/v: [B, Hkv, L, D]; grouped-query heads share their KV head. Soft-capped
    logits (Gemma 2) are beyond torch's fused kernel: the scores are formed, capped, masked and
    normalized (with any sinks) here. Attention sinks alone (GPT-OSS) ride the fused kernel as a last
    key of zeros that k and v then carry (see _gather, _with_sink_key), whose score a float mask sets to
    each head's sink (q . 0 = 0): softmax over [scores, sink], the sink attending to nothing."""
    if softcap <= 0:
        if sinks is not None:
            attn_mask = _sink_mask(q, attn_mask, is_causal, sinks, k.shape[2] - 1)
            is_causal = False
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                                              enable_gqa=q.shape[1] != k.shape[1])
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = softcap * torch.tanh((q.float() @ k.float().transpose(-1, -2)) * (scale / softcap))
    if is_causal:
        attn_mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return (softmax_with_sinks(scores, sinks) @ v.float()).to(q.dtype)


def _sink_mask(q: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool, sinks: torch.Tensor,
               keys: int) -> torch.Tensor:
    """The float mask over `keys` keys and the sink key after them: 0 or -inf by `attn_mask` (or the
    causal rule), each query head's sink logit for the last."""
    b, hq, nq, _ = q.shape
    if is_causal:
        attn_mask = torch.ones(nq, keys, dtype=torch.bool, device=q.device).tril(keys - nq)
    visible = torch.zeros((), dtype=q.dtype, device=q.device)
    if attn_mask is not None:
        visible = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(~attn_mask, float("-inf"))
    sink = sinks.to(q.dtype).view(1, hq, 1, 1).expand(b, hq, nq, 1)
    return torch.cat([visible.expand(b, hq, nq, keys), sink], dim=-1)


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
        k: torch.Tensor | None,
        v: torch.Tensor | None,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        sliding_window: int | None,
        softcap: float = 0.0,
        sinks: torch.Tensor | None = None,
        store_kv: bool = True,
    ) -> torch.Tensor:
        if store_kv:
            ops.store_kv_cache(k, v, k_cache, v_cache, meta.slot_mapping)
        out = torch.empty_like(q)
        sink_key = sinks is not None and softcap <= 0  # sinks as one more (zero) key: see _sdpa
        nd = meta.num_decodes
        if nd:
            # Each decode's last `span` keys, right-aligned (a shorter context's leading ones masked): the
            # window, where it is shorter than the longest context, so a sliding layer reads only its window.
            span = max(meta.seq_lens_host[:nd])
            if sliding_window is not None:
                span = min(span, sliding_window)
            q_pos = meta.seq_lens[:nd, None].long() - 1
            k_pos = q_pos + 1 - span + torch.arange(span, device=q.device)
            keys, values = _gather(k_cache, v_cache, meta.block_tables[:nd], k_pos.clamp(min=0), q.dtype, sink_key)
            mask = (k_pos >= 0) & _window_mask(q_pos, k_pos, sliding_window)
            out[:nd] = _sdpa(q[:nd, :, None], keys, values, scale, softcap, attn_mask=mask[:, None, None, :],
                             sinks=sinks)[:, :, 0]
        start = nd
        for i in range(nd, meta.num_seqs):
            q_len, seq_len = meta.query_lens_host[i], meta.seq_lens_host[i]
            qi = q[start : start + q_len].transpose(0, 1)[None]
            q_pos = torch.arange(seq_len - q_len, seq_len, device=q.device)[:, None]
            k_pos = torch.arange(seq_len, device=q.device)[None, :]
            limits = meta.key_limits_host[start : start + q_len] if meta.key_limits_host else None
            q_limit = None
            if limits is not None and any(limit > p for p, limit in enumerate(limits, seq_len - q_len)):
                q_limit = torch.tensor(limits, device=q.device)[:, None]
            # A wholly new context attends over its fresh K/V, unless the cache holds them rounded (FP8),
            # which is what every later step will see.
            # (No k and v: they were stored with the rotation, and are read back.)
            if q_len == seq_len and k is not None and k_cache.dtype == q.dtype and q_limit is None:
                ki = k[start : start + q_len].transpose(0, 1)[None]
                vi = v[start : start + q_len].transpose(0, 1)[None]
                if sink_key:
                    ki, vi = _with_sink_key(ki), _with_sink_key(vi)
                mask = None if sliding_window is None else _window_mask(q_pos, k_pos, sliding_window)
                res = _sdpa(qi, ki, vi, scale, softcap, attn_mask=mask, is_causal=mask is None, sinks=sinks)
            else:
                ki, vi = _gather(k_cache, v_cache, meta.block_tables[i : i + 1], seq_len, q.dtype, sink_key)
                mask = _window_mask(q_pos, k_pos, sliding_window, q_limit)
                res = _sdpa(qi, ki, vi, scale, softcap, attn_mask=mask, sinks=sinks)
            out[start : start + q_len] = res[0].transpose(0, 1)
            start += q_len
        return out
