"""The PyTorch reference attention backend (CPU, and any device as a fallback)."""

from __future__ import annotations

import torch

from pagoda.engine.attention.metadata import AttentionMetadata
from pagoda.kernels import ops


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
    ) -> torch.Tensor:
        num_tokens = meta.slot_mapping.shape[0]
        ops.store_kv_cache(k[:num_tokens], v[:num_tokens], k_cache, v_cache, meta.slot_mapping)
        out = torch.empty_like(q)
        nd = meta.num_decodes
        if nd:
            max_len = max(meta.seq_lens_host[:nd])
            out[:nd] = ops.paged_attention_decode(
                q[:nd], k_cache, v_cache, meta.block_tables[:nd], meta.seq_lens[:nd], max_len, scale, sliding_window
            )
        start = nd
        for i in range(nd, meta.num_seqs):
            q_len = meta.query_lens_host[i]
            out[start : start + q_len] = ops.paged_attention_prefill(
                q[start : start + q_len], k_cache, v_cache, meta.block_tables[i], meta.seq_lens_host[i], scale, sliding_window
            )
            start += q_len
        return out
