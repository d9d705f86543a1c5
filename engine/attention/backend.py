"""Attention backends: store the step's new K/V, then attend over the paged cache.

The order is part of the contract: every backend writes all new K/V of the
layer before any attention reads, because prefix-cache hits within one batch
may read blocks another sequence of the same batch is writing.
"""

from __future__ import annotations

from typing import Protocol

import torch

from pagoda.engine.attention.metadata import AttentionMetadata


class AttentionBackend(Protocol):
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
        """q: [T, Hq, D], k/v: [T, Hkv, D], caches: [blocks, block_size, Hkv, D] -> [T, Hq, D]; logits
        capped to softcap * tanh(logit / softcap) where softcap > 0 (Gemma 2); `sinks` [Hq] fp32: each
        head's attention-sink logit, a key of value zero in every softmax (GPT-OSS). `store_kv` off: k/v are
        already in the cache (a layer sharing an earlier one's K/V, or one whose rotate_and_store wrote them:
        k and v are then None), which only the attention reads."""
        ...


def select_backend(device: torch.device) -> AttentionBackend:
    """The Triton kernels on CUDA, the PyTorch reference elsewhere (imported lazily: CPU never loads Triton)."""
    if device.type == "cuda":
        from pagoda.engine.attention.triton_backend import TritonAttentionBackend

        return TritonAttentionBackend()
    from pagoda.engine.attention.torch_backend import TorchAttentionBackend

    return TorchAttentionBackend()
