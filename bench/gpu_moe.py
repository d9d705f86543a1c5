"""The fused MoE kernel on real layer shapes: bandwidth and FLOP rate against the device's ceilings.

For one MoE layer of Qwen3-30B-A3B (128 experts, top 8, hidden 2048, expert
intermediate 768) and of Mixtral-8x7B (8 experts, top 2, hidden 4096,
intermediate 14336), random bf16 weights and uniformly random routing, at 1
to 4096 tokens. Reported per size:

- the bytes a step must move: the weights of every expert some token chose
  (each read once is the floor), plus activations in and out;
- fused_ms: the Triton grouped GEMM (`pagoda.kernels.triton.fused_moe`);
- loop_ms: the per-expert PyTorch loop (`pagoda.kernels.reference.fused_moe`,
  what Hugging Face's MoE blocks do), in the same run;
- bandwidth_fraction: floor bytes / fused time over the measured copy
  bandwidth (decode sizes are memory-bound: the target is the same 80% as
  the decode attention kernel), and TFLOP/s for the prefill sizes;
- fp8_ms, fp8_bandwidth_fraction: the same experts in FP8 with 128x128
  block scales (Qwen3-30B-A3B-FP8's format): half the weight bytes;
- int4_ms, int4_bandwidth_fraction: the same experts in 4 bits with fp16
  scales and zero points per group of 128 (Qwen3-30B-A3B-GPTQ-Int4's
  format): a quarter of the weight bytes.

    python -m bench.gpu_moe
"""

from __future__ import annotations

import torch

from bench.gpu_env import bench_ms, copy_bandwidth, device_facts, graph_ms, record
from pagoda.engine.layers.fp8 import quantize_fp8_blocks
from pagoda.engine.layers.int_quant import pack_along_rows, quantize_int_groups
from pagoda.kernels import reference
from pagoda.kernels.triton import fused_moe

# name -> (experts, top_k, hidden, expert intermediate), from each model's public config.json
LAYERS = {
    "qwen3-30b-a3b": (128, 8, 2048, 768),
    "mixtral-8x7b": (8, 2, 4096, 14336),
}
TOKENS = [1, 4, 16, 64, 256, 1024, 4096]
FP8_BLOCK = (128, 128)
INT_GROUP = 128


def _layer(experts: int, hidden: int, inter: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(0)
    w13 = torch.randn(experts, 2 * inter, hidden, device="cuda", dtype=torch.bfloat16, generator=g) / hidden**0.5
    w2 = torch.randn(experts, hidden, inter, device="cuda", dtype=torch.bfloat16, generator=g) / inter**0.5
    return w13, w2


def _fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [quantize_fp8_blocks(expert, FP8_BLOCK) for expert in w]
    return torch.stack([q for q, _ in parts]), torch.stack([s for _, s in parts])


def _int4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    parts = [quantize_int_groups(expert.float(), 4, INT_GROUP, symmetric=False) for expert in w]
    return (torch.stack([pack_along_rows(q, 4) for q, _, _ in parts]), torch.stack([s.half() for _, s, _ in parts]),
            torch.stack([z for _, _, z in parts]))


def _routing(tokens: int, experts: int, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(tokens, experts, device="cuda")
    return torch.softmax(logits, dim=-1).topk(top_k, dim=-1)


@torch.inference_mode()
def main() -> None:
    copy_bw = copy_bandwidth()
    rows = []
    for name, (experts, top_k, hidden, inter) in LAYERS.items():
        w13, w2 = _layer(experts, hidden, inter)
        (q13, s13), (q2, s2) = _fp8(w13), _fp8(w2)
        (i13, is13, iz13), (i2, is2, iz2) = _int4(w13), _int4(w2)
        int4 = reference.IntExperts(is13, iz13, is2, iz2, 4, INT_GROUP, INT_GROUP)
        expert_bytes = 3 * hidden * inter * w13.element_size()
        for tokens in TOKENS:
            x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
            weights, ids = _routing(tokens, experts, top_k)
            used = int(torch.unique(ids).numel())
            act_bytes = tokens * top_k * (hidden + 3 * inter + hidden) * x.element_size() + 2 * x.numel() * 2
            floor_bytes = used * expert_bytes + act_bytes
            flops = 2 * tokens * top_k * 3 * hidden * inter
            fused_ms = bench_ms(lambda: fused_moe(x, w13, w2, weights, ids))
            fused_graph_ms = graph_ms(lambda: fused_moe(x, w13, w2, weights, ids))
            loop_ms = bench_ms(lambda: reference.fused_moe(x, w13, w2, weights, ids))
            fp8_ms = bench_ms(lambda: fused_moe(x, q13, q2, weights, ids, s13, s2, FP8_BLOCK))
            fp8_bytes = used * expert_bytes // 2 + act_bytes
            int4_ms = bench_ms(lambda: fused_moe(x, i13, i2, weights, ids, int_experts=int4))
            int4_bytes = used * (expert_bytes // 4 + 3 * hidden * inter // INT_GROUP * 3) + act_bytes
            err = (fused_moe(x, w13, w2, weights, ids).float() - reference.fused_moe(x, w13, w2, weights, ids).float())
            row = {
                "layer": name, "tokens": tokens, "experts_used": used, "floor_bytes": floor_bytes,
                "fused_ms": fused_ms, "loop_ms": loop_ms, "speedup_over_loop": loop_ms / fused_ms,
                "bandwidth_fraction": floor_bytes / (fused_ms * 1e-3) / copy_bw,
                # Replayed from a graph (as decode steps run it): the kernels' time without Python's launches.
                "fused_graph_ms": fused_graph_ms,
                "graph_bandwidth_fraction": floor_bytes / (fused_graph_ms * 1e-3) / copy_bw if fused_graph_ms else None,
                "tflops": flops / (fused_ms * 1e-3) / 1e12,
                "max_abs_diff_vs_loop": float(err.abs().max()),
                "fp8_ms": fp8_ms, "fp8_bandwidth_fraction": fp8_bytes / (fp8_ms * 1e-3) / copy_bw,
                "int4_ms": int4_ms, "int4_bandwidth_fraction": int4_bytes / (int4_ms * 1e-3) / copy_bw,
            }
            rows.append(row)
            graph = (f", graph {fused_graph_ms:.3f} ms ({row['graph_bandwidth_fraction']:.0%})" if fused_graph_ms
                     else "")
            print(f"{name:>14} T={tokens:>5}: {used:>3} experts, fused {fused_ms:.3f} ms "
                  f"({row['bandwidth_fraction']:.0%} of copy bw, {row['tflops']:.1f} TFLOP/s){graph}, "
                  f"loop {loop_ms:.3f} ms ({row['speedup_over_loop']:.1f}x), fp8 {fp8_ms:.3f} ms "
                  f"({row['fp8_bandwidth_fraction']:.0%}), int4 {int4_ms:.3f} ms "
                  f"({row['int4_bandwidth_fraction']:.0%})")
    record("gpu_moe", {
        "device_facts": device_facts(),
        "copy_bytes_per_s": copy_bw,
        "workload": {"layers": LAYERS, "tokens": TOKENS, "dtype": "bfloat16", "routing": "uniform random"},
        "target": "bandwidth_fraction >= 0.8 at decode sizes (tokens <= 16)",
        "rows": rows,
    })


if __name__ == "__main__":
    main()
