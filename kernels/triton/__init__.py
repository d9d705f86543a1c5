"""Triton kernels behind the entry points of `pagoda.kernels.ops`.

Each module owns one kernel (or one kernel family) and a host wrapper whose
signature matches its PyTorch reference in `pagoda.kernels.reference`, so the
references define what every kernel must compute. Importing this package
decides, once, whether the kernels are compiled or interpreted: Triton reads
TRITON_INTERPRET when a kernel is decorated.
"""

from pagoda.kernels.triton.activation import clamped_swiglu_and_mul, gelu_tanh_and_mul, silu_and_mul
from pagoda.kernels.triton.fp8_linear import fp8_block_linear
from pagoda.kernels.triton.skinny_gemm import fused_linear
from pagoda.kernels.triton.int_gemm import int_linear
from pagoda.kernels.triton.kv_cache import store_kv_cache
from pagoda.kernels.triton.moe import fused_moe
from pagoda.kernels.triton.norm import fused_add_rms_norm, rms_norm
from pagoda.kernels.triton.paged_decode import paged_attention_decode
from pagoda.kernels.triton.paged_prefill import paged_attention_prefill, paged_attention_prefill_varlen
from pagoda.kernels.triton.recurrent import gated_delta_decode_slots, ssd_decode_slots
from pagoda.kernels.triton.rotary import rotary_embedding, rotate_and_store_kv
from pagoda.kernels.triton.sampling import gumbel_sample

__all__ = [
    "clamped_swiglu_and_mul",
    "fp8_block_linear",
    "fused_add_rms_norm",
    "fused_linear",
    "fused_moe",
    "gated_delta_decode_slots",
    "gelu_tanh_and_mul",
    "gumbel_sample",
    "int_linear",
    "paged_attention_decode",
    "paged_attention_prefill",
    "paged_attention_prefill_varlen",
    "rms_norm",
    "rotary_embedding",
    "rotate_and_store_kv",
    "silu_and_mul",
    "ssd_decode_slots",
    "store_kv_cache",
]
