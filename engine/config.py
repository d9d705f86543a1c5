"""Engine settings, with vLLM's names and defaults, validated in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pagoda.engine.spec_decode import SpeculativeConfig

DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30
SCHEDULING_POLICIES = ("fcfs", "priority")
# vLLM's --quantization names of checkpoint formats (its marlin kernels' names included), each the
# quant_method it requires of the checkpoint; "fp8" alone quantizes at load.
CHECKPOINT_QUANTIZATIONS = {"gptq": "gptq", "gptq_marlin": "gptq", "awq": "awq", "awq_marlin": "awq",
                            "compressed-tensors": "compressed-tensors", "bitsandbytes": "bitsandbytes",
                            "mxfp4": "mxfp4"}
# Quantizations applied at load to a full-precision checkpoint (any checkpoint format names its own).
ONLINE_QUANTIZATIONS = ("fp8", "bitsandbytes")
QUANTIZATIONS = ("fp8", *CHECKPOINT_QUANTIZATIONS)
# vLLM's --kv-cache-dtype values: "auto" keeps the model's dtype; "fp8" is fp8_e4m3.
KV_CACHE_DTYPES = {"auto": None, "fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn,
                   "fp8_e5m2": torch.float8_e5m2}
# vLLM's --mamba-ssm-cache-dtype values: "auto" is the config's `mamba_ssm_cache_dtype` where it names
# one (Nemotron-H's float32), else the model's dtype.
MAMBA_SSM_CACHE_DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16,
                          "bfloat16": torch.bfloat16}


@dataclass
class EngineConfig:
    model: str
    tokenizer: str | None = None  # defaults to the model directory
    dtype: str = "auto"
    max_model_len: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    enable_prefix_caching: bool = True
    # Sliding-window layers keep only the blocks inside their window, in block tables of their own
    # (kv_cache_layout.py); True keeps every layer's blocks for the whole sequence (vLLM's flag).
    disable_hybrid_kv_cache_manager: bool = False
    gpu_memory_utilization: float = 0.9
    # vLLM's --async-scheduling: launch each step before the previous one's tokens are read back, so the
    # host's scheduling and input preparation overlap the GPU's forward pass (LLMEngine.core_step).
    async_scheduling: bool = False
    # The KV cache's byte budget (recurrent states included). Required in effect on CPU, which has no device
    # memory to profile (default 1 GiB); on CUDA it replaces profiling against gpu_memory_utilization.
    kv_cache_memory_bytes: int | None = None
    # Fixes the number of KV blocks outright (tests use it to force preemption).
    num_kv_blocks: int | None = None
    tensor_parallel_size: int = 1
    # MoE layers give each tensor-parallel rank E / tensor_parallel_size whole experts instead of a slice
    # of every expert (vLLM's --enable-expert-parallel).
    enable_expert_parallel: bool = False
    # Multi-node tensor parallelism: the ranks spread over `nnodes` machines, tensor_parallel_size / nnodes
    # on each. Node 0 runs the engine (rank 0); the others run `pagoda serve --headless`. Every node
    # meets at master_addr:master_port (node 0's address).
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    device: str = "auto"
    seed: int = 0
    enforce_eager: bool = False
    # "fcfs", or "priority": requests carry a priority (lower runs first) that orders waiting and preemption.
    scheduling_policy: str = "fcfs"
    # LoRA adapters served beside the base model: how many can run in one batch, and their largest rank.
    enable_lora: bool = False
    max_loras: int = 4
    max_lora_rank: int = 16
    # "fp8": projections held in FP8 (block scales of 128 x 128): quantized at load from a full-precision
    # checkpoint, or as an FP8 checkpoint stores them. None: as the checkpoint stores them. A checkpoint
    # format's name (gptq, awq, compressed-tensors, bitsandbytes, or vLLM's gptq_marlin, awq_marlin) asserts
    # the checkpoint's.
    quantization: str | None = None
    # Speculative decoding, as vLLM's speculative_config: {"method": "ngram", "num_speculative_tokens": k,
    # "prompt_lookup_max": 4, "prompt_lookup_min": 1}; parsed into a SpeculativeConfig.
    speculative_config: dict[str, Any] | SpeculativeConfig | None = None
    # The KV cache's element type (vLLM's kv_cache_dtype): "auto" (the model's), or an FP8 format that holds
    # twice the tokens in the same memory, each key and value rounded to it (saturating at its largest value).
    kv_cache_dtype: str = "auto"
    # Mamba layers' scan states (one [head_dim, state] matrix per head, per sequence): "auto" or a dtype
    # (MAMBA_SSM_CACHE_DTYPES); float32 keeps long generations closest to a float32 reference.
    mamba_ssm_cache_dtype: str = "auto"
    # Most images one prompt may carry (vLLM's --limit-mm-per-prompt); None: no limit.
    limit_images_per_prompt: int | None = None
    # Settings handed to the model's image processor (vLLM's --mm-processor-kwargs), e.g. Qwen2-VL's
    # {"max_pixels": 1003520} to bound an image's token count.
    mm_processor_kwargs: dict[str, Any] | None = None
    # Default sampling parameters of requests that set none (vLLM's --generation-config): "auto" reads the
    # model's generation_config.json, "vllm" keeps the engine's defaults, else a directory holding one.
    generation_config: str = "auto"

    def __post_init__(self) -> None:
        checks = [
            (self.max_num_seqs >= 1, "max_num_seqs must be >= 1"),
            (self.max_num_batched_tokens >= 1, "max_num_batched_tokens must be >= 1"),
            (self.block_size >= 1 and self.block_size & (self.block_size - 1) == 0, "block_size must be a power of two"),
            (0.0 < self.gpu_memory_utilization <= 1.0, "gpu_memory_utilization must be in (0, 1]"),
            (self.kv_cache_memory_bytes is None or self.kv_cache_memory_bytes > 0, "kv_cache_memory_bytes must be positive"),
            (self.num_kv_blocks is None or self.num_kv_blocks >= 1, "num_kv_blocks must be >= 1"),
            (self.tensor_parallel_size >= 1, "tensor_parallel_size must be >= 1"),
            (self.nnodes >= 1 and self.tensor_parallel_size % self.nnodes == 0,
             "nnodes must be >= 1 and divide tensor_parallel_size (the same number of ranks on every node)"),
            (0 <= self.node_rank < self.nnodes, "node_rank must be in [0, nnodes)"),
            (0 < self.master_port < 65536, "master_port must be a TCP port"),
            (self.scheduling_policy in SCHEDULING_POLICIES,
             f"scheduling_policy must be one of {', '.join(SCHEDULING_POLICIES)}"),
            (self.max_loras >= 1 and self.max_lora_rank >= 1, "max_loras and max_lora_rank must be >= 1"),
            (self.quantization in (None, *QUANTIZATIONS),
             f"quantization must be one of {', '.join(QUANTIZATIONS)} (or unset)"),
            (self.kv_cache_dtype in KV_CACHE_DTYPES, f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}"),
            (self.mamba_ssm_cache_dtype in MAMBA_SSM_CACHE_DTYPES,
             f"mamba_ssm_cache_dtype must be one of {', '.join(MAMBA_SSM_CACHE_DTYPES)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.speculative_config = SpeculativeConfig.parse(self.speculative_config)
        if self.speculative_config is not None and self.speculative_config.method == "draft_model" \
                and self.tensor_parallel_size > 1:
            raise ValueError("speculative decoding with a draft model runs with tensor_parallel_size 1 only")

    @property
    def ranks_per_node(self) -> int:
        return self.tensor_parallel_size // self.nnodes

    def resolve_kv_cache_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        return KV_CACHE_DTYPES[self.kv_cache_dtype] or model_dtype

    def resolve_mamba_ssm_cache_dtype(self, model_dtype: torch.dtype, hf_config: dict[str, Any]) -> torch.dtype:
        named = MAMBA_SSM_CACHE_DTYPES[self.mamba_ssm_cache_dtype] or MAMBA_SSM_CACHE_DTYPES.get(
            str(hf_config.get("mamba_ssm_cache_dtype") or "auto"))
        return named or model_dtype

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)
