"""The Triton attention backend (CUDA): one store, one decode launch, one varlen prefill launch per layer.

The reference backend loops over prefill sequences on the host; this one
hands the whole step to three kernels and never reads device values back,
so a decode step can be captured in a CUDA graph. Decodes come first in the
batch (see AttentionMetadata), so the decode kernel takes the leading rows
and the prefill kernel the sequences after them, both writing into one
output.
"""

from __future__ import annotations

import torch

from pagoda.engine.attention.metadata import AttentionMetadata
from pagoda.kernels.triton import paged_attention_decode, paged_attention_prefill_varlen, store_kv_cache


class TritonAttentionBackend:
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
        num_tokens = meta.slot_mapping.shape[0]
        # Contract: all new K/V of the layer are in the cache before any attention reads it.
        if store_kv:
            store_kv_cache(k[:num_tokens], v[:num_tokens], k_cache, v_cache, meta.slot_mapping)
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        nd = meta.num_decodes
        if nd:
            paged_attention_decode(
                q[:nd], k_cache, v_cache, meta.block_tables[:nd], meta.seq_lens[:nd], meta.max_seq_len,
                scale, sliding_window, softcap=softcap, sinks=sinks, out=out[:nd],
            )
        if meta.num_seqs > nd:
            paged_attention_prefill_varlen(
                q, k_cache, v_cache, meta.block_tables, meta.query_start_loc, meta.seq_lens, meta.max_query_len,
                scale, sliding_window, softcap=softcap, first_seq=nd, num_seqs=meta.num_seqs - nd, out=out,
                key_limits=meta.key_limits, sinks=sinks,
            )
        return out
