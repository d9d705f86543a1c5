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
  the decode attention kernel), and TFLOP/s for the prefill sizes.

    python -m bench.gpu_moe
"""

from __future__ import annotations

import torch

from bench.gpu_env import bench_ms, copy_bandwidth, device_facts, record
from pagoda.kernels import reference
from pagoda.kernels.triton import fused_moe

# name -> (experts, top_k, hidden, expert intermediate), from each model's public config.json
LAYERS = {
    "qwen3-30b-a3b": (128, 8, 2048, 768),
    "mixtral-8x7b": (8, 2, 4096, 14336),
}
TOKENS = [1, 4, 16, 64, 256, 1024, 4096]


def _layer(experts: int, hidden: int, inter: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(0)
    w13 = torch.randn(experts, 2 * inter, hidden, device="cuda", dtype=torch.bfloat16, generator=g) / hidden**0.5
    w2 = torch.randn(experts, hidden, inter, device="cuda", dtype=torch.bfloat16, generator=g) / inter**0.5
    return w13, w2


def _routing(tokens: int, experts: int, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(tokens, experts, device="cuda")
    return torch.softmax(logits, dim=-1).topk(top_k, dim=-1)


@torch.inference_mode()
def main() -> None:
    copy_bw = copy_bandwidth()
    rows = []
    for name, (experts, top_k, hidden, inter) in LAYERS.items():
        w13, w2 = _layer(experts, hidden, inter)
        expert_bytes = 3 * hidden * inter * w13.element_size()
        for tokens in TOKENS:
            x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
            weights, ids = _routing(tokens, experts, top_k)
            used = int(torch.unique(ids).numel())
            act_bytes = tokens * top_k * (hidden + 3 * inter + hidden) * x.element_size() + 2 * x.numel() * 2
            floor_bytes = used * expert_bytes + act_bytes
            flops = 2 * tokens * top_k * 3 * hidden * inter
            fused_ms = bench_ms(lambda: fused_moe(x, w13, w2, weights, ids))
            loop_ms = bench_ms(lambda: reference.fused_moe(x, w13, w2, weights, ids))
            err = (fused_moe(x, w13, w2, weights, ids).float() - reference.fused_moe(x, w13, w2, weights, ids).float())
            row = {
                "layer": name, "tokens": tokens, "experts_used": used, "floor_bytes": floor_bytes,
                "fused_ms": fused_ms, "loop_ms": loop_ms, "speedup_over_loop": loop_ms / fused_ms,
                "bandwidth_fraction": floor_bytes / (fused_ms * 1e-3) / copy_bw,
                "tflops": flops / (fused_ms * 1e-3) / 1e12,
                "max_abs_diff_vs_loop": float(err.abs().max()),
            }
            rows.append(row)
            print(f"{name:>14} T={tokens:>5}: {used:>3} experts, fused {fused_ms:.3f} ms "
                  f"({row['bandwidth_fraction']:.0%} of copy bw, {row['tflops']:.1f} TFLOP/s), "
                  f"loop {loop_ms:.3f} ms ({row['speedup_over_loop']:.1f}x)")
    record("gpu_moe", {
        "device_facts": device_facts(),
        "copy_bytes_per_s": copy_bw,
        "workload": {"layers": LAYERS, "tokens": TOKENS, "dtype": "bfloat16", "routing": "uniform random"},
        "target": "bandwidth_fraction >= 0.8 at decode sizes (tokens <= 16)",
        "rows": rows,
    })


if __name__ == "__main__":
    main()
