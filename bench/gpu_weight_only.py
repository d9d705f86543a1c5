"""Weight-only quantized GEMMs against cuBLAS bf16 on Llama-3-8B's projections: what fewer weight
bytes buy.

Weight-only FP8 (block scales of 128 x 128, as Qwen3-*-FP8 ship, or one scale
per output channel, as llm-compressor's FP8_DYNAMIC checkpoints) moves one
byte per weight and the 4-bit integer formats (GPTQ, AWQ, compressed-tensors
W4A16; groups of 128 with zero points) half a byte, where bf16 moves two; in
the memory-bound decode regime the GEMMs should approach 0.5x and 0.25x of
cuBLAS' bf16 time. Per projection and batch (1 to 256 rows): the kernel's
time, `torch.nn.functional.linear` on the dequantized weight (the same math at
full width), their ratio, and the kernel's bytes over its time as a fraction
of the measured copy bandwidth (target: 80 % at decode sizes).

    python -m bench.gpu_weight_only fp8           # -> bench/results/gpu_fp8.json
    python -m bench.gpu_weight_only fp8_channel   # -> bench/results/gpu_fp8_channel.json
    python -m bench.gpu_weight_only int4          # -> bench/results/gpu_int4.json
    python -m bench.gpu_weight_only nf4           # -> bench/results/gpu_nf4.json
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

import torch

from bench.gpu_env import bench_ms, copy_bandwidth, device_facts, graph_ms, record
from pagoda.engine.layers.fp8 import WHOLE, quantize_fp8_blocks
from pagoda.engine.layers.int_quant import pack_along_rows, quantize_int_groups
from pagoda.kernels import reference
from pagoda.kernels.triton import fp8_block_linear, int_linear

FP8_BLOCK = (128, 128)
INT_GROUP = 128
# name -> (out, in) of Llama-3-8B's projections (q/k/v and gate/up fused as the engine holds them)
PROJECTIONS = {"qkv_proj": (6144, 4096), "o_proj": (4096, 4096), "gate_up_proj": (28672, 4096), "down_proj": (4096, 14336)}
ROWS = [1, 4, 16, 64, 256]


Quantized = tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor, int]


def _fp8(block: tuple[int, int], weight: torch.Tensor) -> Quantized:
    """(GEMM, dequantized bf16 weight, bytes of the quantized weight) for FP8 with `block` scales."""
    q, scale = (t.cuda() for t in quantize_fp8_blocks(weight, block))
    dense = reference.fp8_block_dequantize(q, scale, block).to(torch.bfloat16)
    return (lambda x: fp8_block_linear(x, q, scale, block)), dense, q.numel() + scale.numel() * 4


def _int4(weight: torch.Tensor) -> Quantized:
    """The same for 4-bit integers with fp16 scales and zero points per group of 128 (GPTQ's usual)."""
    ints, scales, zeros = quantize_int_groups(weight, 4, INT_GROUP, symmetric=False)
    qweight, scales, zeros = pack_along_rows(ints, 4).cuda(), scales.half().cuda(), zeros.cuda()
    dense = reference.int_dequantize(qweight, scales, zeros, None, 4, INT_GROUP).to(torch.bfloat16)
    gemm = lambda x: int_linear(x, qweight, scales, zeros, None, 4, INT_GROUP)  # noqa: E731
    return gemm, dense, qweight.numel() * 4 + scales.numel() * 2 + zeros.numel()


# bitsandbytes' NF4 codebook (its quant_map): normal quantiles scaled to [-1, 1].
NF4 = torch.tensor([-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0, 0.0796, 0.1609, 0.2461, 0.3379,
                    0.4407, 0.5626, 0.7230, 1.0])


def _nf4(weight: torch.Tensor) -> Quantized:
    """The same for bitsandbytes' NF4: blocks of 64 along K, fp32 absmax, each value the nearest code."""
    n, k = weight.shape
    scales = weight.view(n, k // 64, 64).abs().amax(-1).clamp_min(1e-8)
    ints = torch.bucketize(weight / scales.repeat_interleave(64, 1), (NF4[1:] + NF4[:-1]) / 2)  # nearest code
    qweight, scales, code = pack_along_rows(ints, 4).cuda(), scales.cuda(), NF4.cuda()
    zeros = torch.zeros(n, k // 64, dtype=torch.uint8, device="cuda")
    dense = reference.int_dequantize(qweight, scales, zeros, None, 4, 64, code).to(torch.bfloat16)
    gemm = lambda x: int_linear(x, qweight, scales, zeros, None, 4, 64, codebook=code)  # noqa: E731
    return gemm, dense, qweight.numel() * 4 + scales.numel() * 4


FORMATS = {
    "fp8": (functools.partial(_fp8, FP8_BLOCK), "fp8_block (128, 128)", 0.5),
    "fp8_channel": (functools.partial(_fp8, (1, WHOLE)), "fp8, one scale per output channel", 0.5),
    "int4": (_int4, f"int4, groups of {INT_GROUP}, zero points", 0.25),
    "nf4": (_nf4, "bitsandbytes nf4, blocks of 64, fp32 absmax", 0.25),
}


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("format", choices=sorted(FORMATS))
    fmt = parser.parse_args().format
    quantize, described, byte_ratio = FORMATS[fmt]
    copy_bw = copy_bandwidth()
    rows_out = []
    for name, (n, k) in PROJECTIONS.items():
        gemm, dense, weight_bytes = quantize(torch.randn(n, k) / k**0.5)
        for m in ROWS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ms = bench_ms(lambda: gemm(x))
            bf16_ms = bench_ms(lambda: torch.nn.functional.linear(x, dense))
            graph, bf16_graph = graph_ms(lambda: gemm(x)), graph_ms(lambda: torch.nn.functional.linear(x, dense))
            moved = weight_bytes + (m * k + m * n) * 2
            diff = gemm(x).float() - torch.nn.functional.linear(x, dense).float()
            row = {"projection": name, "rows": m, "ms": ms, "bf16_ms": bf16_ms, "over_bf16": ms / bf16_ms,
                   "bandwidth_fraction": moved / (ms * 1e-3) / copy_bw,
                   "tflops": 2 * m * n * k / (ms * 1e-3) / 1e12, "max_abs_diff": float(diff.abs().max()),
                   # Replayed from a graph, as decode steps run them: the kernels' own time.
                   "graph_ms": graph, "bf16_graph_ms": bf16_graph,
                   "graph_bandwidth_fraction": moved / (graph * 1e-3) / copy_bw if graph else None}
            rows_out.append(row)
            print(f"{name:>13} m={m:>3}: {fmt} {ms:.3f} ms ({row['bandwidth_fraction']:.0%} of copy bw), "
                  f"bf16 {bf16_ms:.3f} ms -> {row['over_bf16']:.2f}x"
                  + (f"; graphs {graph:.3f} vs {bf16_graph:.3f} ms ({row['graph_bandwidth_fraction']:.0%})"
                     if graph and bf16_graph else ""))
    record(f"gpu_{fmt}", {
        "device_facts": device_facts(),
        "copy_bytes_per_s": copy_bw,
        "workload": {"projections": PROJECTIONS, "rows": ROWS, "format": described, "activations": "bfloat16"},
        "target": f"bandwidth_fraction >= 0.8 and over_bf16 near {byte_ratio} at rows <= 16",
        "rows": rows_out,
    })


if __name__ == "__main__":
    main()
