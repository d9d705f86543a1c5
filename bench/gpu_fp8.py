"""The FP8 weight GEMM against cuBLAS bf16 on Llama-3-8B's projections: what halving weight bytes buys.

Weight-only FP8 (block scales of 128 x 128, as Qwen3-*-FP8 ship) moves one
byte per weight where bf16 moves two, so in the memory-bound decode regime
the GEMM should approach half of cuBLAS' bf16 time. Per projection and batch
(1 to 256 rows): fp8_ms (`pagoda.kernels.triton.fp8_block_linear`), bf16_ms
(`torch.nn.functional.linear` on the dequantized weight, the same math at
full width), their ratio, and the FP8 kernel's bytes over its time as a
fraction of the measured copy bandwidth (target: 80 % at decode sizes).

    python -m bench.gpu_fp8
"""

from __future__ import annotations

import torch

from bench.gpu_env import bench_ms, copy_bandwidth, device_facts, record
from pagoda.engine.layers.fp8 import quantize_fp8_blocks
from pagoda.kernels import reference
from pagoda.kernels.triton import fp8_block_linear

BLOCK = (128, 128)
# name -> (out, in) of Llama-3-8B's projections (q/k/v and gate/up fused as the engine holds them)
PROJECTIONS = {"qkv_proj": (6144, 4096), "o_proj": (4096, 4096), "gate_up_proj": (28672, 4096), "down_proj": (4096, 14336)}
ROWS = [1, 4, 16, 64, 256]


@torch.inference_mode()
def main() -> None:
    copy_bw = copy_bandwidth()
    rows_out = []
    for name, (n, k) in PROJECTIONS.items():
        weight, scale = quantize_fp8_blocks(torch.randn(n, k) / k**0.5, BLOCK)
        weight, scale = weight.cuda(), scale.cuda()
        dense = reference.fp8_block_dequantize(weight, scale, BLOCK).to(torch.bfloat16)
        for m in ROWS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            fp8_ms = bench_ms(lambda: fp8_block_linear(x, weight, scale, BLOCK))
            bf16_ms = bench_ms(lambda: torch.nn.functional.linear(x, dense))
            moved = n * k + scale.numel() * 4 + (m * k + m * n) * 2
            diff = (fp8_block_linear(x, weight, scale, BLOCK).float() - torch.nn.functional.linear(x, dense).float())
            row = {"projection": name, "rows": m, "fp8_ms": fp8_ms, "bf16_ms": bf16_ms,
                   "fp8_over_bf16": fp8_ms / bf16_ms, "bandwidth_fraction": moved / (fp8_ms * 1e-3) / copy_bw,
                   "tflops": 2 * m * n * k / (fp8_ms * 1e-3) / 1e12, "max_abs_diff": float(diff.abs().max())}
            rows_out.append(row)
            print(f"{name:>13} m={m:>3}: fp8 {fp8_ms:.3f} ms ({row['bandwidth_fraction']:.0%} of copy bw), "
                  f"bf16 {bf16_ms:.3f} ms -> {row['fp8_over_bf16']:.2f}x")
    record("gpu_fp8", {
        "device_facts": device_facts(),
        "copy_bytes_per_s": copy_bw,
        "workload": {"projections": PROJECTIONS, "rows": ROWS, "block": BLOCK, "activations": "bfloat16"},
        "target": "bandwidth_fraction >= 0.8 and fp8_over_bf16 near 0.5 at rows <= 16",
        "rows": rows_out,
    })


if __name__ == "__main__":
    main()
