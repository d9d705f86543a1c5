"""The kernel entry points the engine calls, dispatched by device.

CPU tensors run the PyTorch references; CUDA tensors will run the Triton
kernels once they exist, behind these same signatures.
"""

from pagoda.kernels.reference import (  # noqa: F401  (re-exported entry points)
    fused_add_rms_norm,
    paged_attention_decode,
    paged_attention_prefill,
    rms_norm,
    rotary_embedding,
    silu_and_mul,
    store_kv_cache,
)
