"""The contract between the operator and `pagoda serve`: its flags and endpoints.

The engine defines these flags on its side; this module is the operator's one
copy of their names, so a test can cross-check the two and a rename on either
side fails loudly instead of producing pods that exit on an unknown flag.
"""

from __future__ import annotations

#: `pagoda serve MODEL_DIR [flags]`: the subcommand and its positional argument.
SERVE_COMMAND = ("pagoda", "serve")

HOST = "--host"
PORT = "--port"
SERVED_MODEL_NAME = "--served-model-name"
API_KEY = "--api-key"
DTYPE = "--dtype"
MAX_MODEL_LEN = "--max-model-len"
MAX_NUM_SEQS = "--max-num-seqs"
MAX_NUM_BATCHED_TOKENS = "--max-num-batched-tokens"
BLOCK_SIZE = "--block-size"
ENABLE_PREFIX_CACHING = "--enable-prefix-caching"
NO_ENABLE_PREFIX_CACHING = "--no-enable-prefix-caching"
GPU_MEMORY_UTILIZATION = "--gpu-memory-utilization"
TENSOR_PARALLEL_SIZE = "--tensor-parallel-size"
ENABLE_EXPERT_PARALLEL = "--enable-expert-parallel"
MAX_QUEUE_LEN = "--max-queue-len"
LOG_LEVEL = "--log-level"
DRAIN_TIMEOUT = "--drain-timeout"
SCHEDULING_POLICY = "--scheduling-policy"
LORA_MODULES = "--lora-modules"
MAX_LORAS = "--max-loras"
MAX_LORA_RANK = "--max-lora-rank"
QUANTIZATION = "--quantization"
KV_CACHE_DTYPE = "--kv-cache-dtype"
MAMBA_SSM_CACHE_DTYPE = "--mamba-ssm-cache-dtype"
SPECULATIVE_CONFIG = "--speculative-config"
NNODES = "--nnodes"
NODE_RANK = "--node-rank"
MASTER_ADDR = "--master-addr"
MASTER_PORT = "--master-port"
HEADLESS = "--headless"

#: Every flag of `pagoda serve` the operator knows.
ALL_FLAGS = (
    HOST, PORT, SERVED_MODEL_NAME, API_KEY, DTYPE, MAX_MODEL_LEN, MAX_NUM_SEQS,
    MAX_NUM_BATCHED_TOKENS, BLOCK_SIZE, ENABLE_PREFIX_CACHING, NO_ENABLE_PREFIX_CACHING,
    GPU_MEMORY_UTILIZATION, TENSOR_PARALLEL_SIZE, ENABLE_EXPERT_PARALLEL, MAX_QUEUE_LEN, LOG_LEVEL, DRAIN_TIMEOUT,
    SCHEDULING_POLICY, LORA_MODULES, MAX_LORAS, MAX_LORA_RANK, QUANTIZATION, KV_CACHE_DTYPE, MAMBA_SSM_CACHE_DTYPE,
    SPECULATIVE_CONFIG,
    NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, HEADLESS,
)

#: Flags whose value the operator derives from the resource itself (wiring,
#: not tuning); `spec.engine.extraArgs` may not set them, which a CEL rule
#: enforces, because a second value would silently break probes, the Service
#: or authentication.
MANAGED_FLAGS = (HOST, PORT, SERVED_MODEL_NAME, API_KEY, TENSOR_PARALLEL_SIZE, DRAIN_TIMEOUT, LORA_MODULES,
                 NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, HEADLESS)

#: Environment variable `pagoda serve` reads its API key from; the operator
#: fills it from a Secret so the key never shows in the pod's command line.
API_KEY_ENV = "PAGODA_API_KEY"

#: The server's port and endpoints.
DEFAULT_PORT = 8000
LIVENESS_PATH = "/health"
READINESS_PATH = "/ready"
METRICS_PATH = "/metrics"

#: Port on a multi-node replica's first pod where the machines' ranks meet (MASTER_PORT).
RENDEZVOUS_PORT = 29500

#: Per-pod gauge of requests queued in the engine: the HPA's metric.
QUEUE_METRIC = "pagoda_requests_waiting"

#: Seconds `pagoda serve` keeps finishing in-flight requests after SIGTERM
#: (passed as DRAIN_TIMEOUT); the pod's termination grace period covers it.
DRAIN_SECONDS = 30
