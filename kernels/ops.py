"""The kernel entry points the engine calls, dispatched by device.

CUDA tensors run the Triton kernels of `pagoda.kernels.triton`, anything
else the PyTorch references, behind one signature per op (the reference's).
Triton is imported on the first CUDA call only: CPU processes never compile
or load it, and a test suite that interprets the kernels on the CPU decides
the mode before any import happens (see tests/kernels/conftest.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

from pagoda.kernels import reference


@functools.cache
def _triton() -> ModuleType:
    import pagoda.kernels.triton as kernels

    return kernels


def _dispatch(name: str) -> Callable[..., Any]:
    """An entry point that runs Triton's `name` when its first tensor argument lives on a CUDA device."""
    ref = getattr(reference, name)

    @functools.wraps(ref)
    def op(first: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        impl = getattr(_triton(), name) if first.is_cuda else ref
        return impl(first, *args, **kwargs)

    return op


rms_norm = _dispatch("rms_norm")
fused_add_rms_norm = _dispatch("fused_add_rms_norm")
fused_linear = _dispatch("fused_linear")
rotary_embedding = _dispatch("rotary_embedding")
silu_and_mul = _dispatch("silu_and_mul")
gelu_tanh_and_mul = _dispatch("gelu_tanh_and_mul")
store_kv_cache = _dispatch("store_kv_cache")
rotate_and_store_kv = _dispatch("rotate_and_store_kv")
paged_attention_decode = _dispatch("paged_attention_decode")
paged_attention_prefill = _dispatch("paged_attention_prefill")
fused_moe = _dispatch("fused_moe")
fp8_block_linear = _dispatch("fp8_block_linear")
int_linear = _dispatch("int_linear")
gated_delta_decode_slots = _dispatch("gated_delta_decode_slots")
ssd_decode_slots = _dispatch("ssd_decode_slots")
gumbel_sample = _dispatch("gumbel_sample")
