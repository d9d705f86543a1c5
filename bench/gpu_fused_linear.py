"""The fused decode linear layer (ops.fused_linear) against cuBLAS and the ops it replaces, per projection.

A decoder layer at decode sizes folds its input norm into qkv, the residual
add into o_proj, the second norm into gate_up, SiLU-and-mul and the residual
add into down. For each of those four projections of Llama-3.2-1B and
Qwen3-0.6B, at 1, 4 and 16 rows, replayed from CUDA graphs as decode steps
run them (`graph_ms`, bench/gpu_env.py):

- fused_ms: the fused kernel;
- cublas_ms: F.linear alone, the GEMM without anything around it;
- unfused_ms: what the layer launched before: the fused residual add + norm
  kernel and F.linear for qkv and gate_up, F.linear for o_proj, SiLU-and-mul
  and F.linear for down (the sum over the four is the old layer's share);
- bandwidth_fraction: the fused kernel's bytes (weight, rows in and out) over
  its time, as a fraction of the measured copy bandwidth.

The target: fused_ms at most cublas_ms (the edges for free) and >= 80 % of
copy bandwidth on the large projections. `--sweep` also times other tiles
(LinearTiles) at 1 and 16 rows and records the best per projection.

    python -m bench.gpu_fused_linear [--sweep]     # -> bench/results/gpu_fused_linear.json
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable
from typing import Any

import torch
import triton

from bench.gpu_env import copy_bandwidth, device_facts, graph_ms, record
from pagoda.kernels import reference
from pagoda.kernels.reference import RowNorm
from pagoda.kernels.triton import fused_add_rms_norm, silu_and_mul
from pagoda.kernels.triton.skinny_gemm import LinearTiles, fused_linear

# model -> projection -> (edge, out features, in features), q/k/v and gate/up fused as the engine holds them
PROJECTIONS = {
    "llama-3.2-1b": {"qkv_proj": ("norm", 3072, 2048), "o_proj": ("residual", 2048, 2048),
                     "gate_up_proj": ("norm", 16384, 2048), "down_proj": ("gated_residual", 2048, 8192)},
    "qwen3-0.6b": {"qkv_proj": ("norm", 4096, 1024), "o_proj": ("residual", 1024, 2048),
                   "gate_up_proj": ("norm", 6144, 1024), "down_proj": ("gated_residual", 1024, 3072)},
}
ROWS = [1, 4, 16]
SWEEP = [LinearTiles(n, k, 4, s) for n, k, s in itertools.product((16, 32, 64), (128, 256, 512), (3, 4))]


def _case(edge: str, m: int, n: int, k: int) -> tuple[dict[str, Any], Callable[[], Any], int]:
    """fused_linear's arguments, the unfused ops it replaces, and the bytes the fused kernel must move."""
    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    x = torch.randn(m, 2 * k if edge.startswith("gated") else k, **bf16)
    weight = torch.randn(n, k, **bf16) / k**0.5
    args: dict[str, Any] = {"x": x, "weight": weight}
    if edge == "norm":
        args["norm"] = RowNorm(torch.rand(k, **bf16) + 0.5, 1e-6)
        residual, norm_weight = torch.randn(m, k, **bf16), args["norm"].weight

        def unfused() -> torch.Tensor:  # before: the residual add and this norm in one kernel, then the GEMM
            return torch.nn.functional.linear(fused_add_rms_norm(x, residual, norm_weight, 1e-6)[0], weight)
    else:
        args["residual"] = torch.randn(m, n, **bf16)
        args["gated"] = edge.startswith("gated")
        act = silu_and_mul if args["gated"] else (lambda rows: rows)

        def unfused() -> torch.Tensor:  # before: the add rode on the next norm's kernel (counted there), so the GEMM
            return torch.nn.functional.linear(act(x), weight)
    moved = (n * k + x.numel() + m * n * (2 if "residual" in args else 1)) * 2
    return args, unfused, moved


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="also time other tiles at 1 and 16 rows (~5 min more)")
    sweep = parser.parse_args().sweep
    copy_bw = copy_bandwidth()
    rows_out = []
    for model, projections in PROJECTIONS.items():
        for name, (edge, n, k) in projections.items():
            for m in ROWS:
                args, unfused, moved = _case(edge, m, n, k)
                plain = silu_and_mul(args["x"]) if args.get("gated") else args["x"]  # the GEMM's own input
                fused_ms = graph_ms(lambda: fused_linear(**args))
                row = {"model": model, "projection": name, "edge": edge, "rows": m, "fused_ms": fused_ms,
                       "cublas_ms": graph_ms(lambda: torch.nn.functional.linear(plain, args["weight"])),
                       "unfused_ms": graph_ms(unfused),
                       "bandwidth_fraction": moved / (fused_ms * 1e-3) / copy_bw if fused_ms else None,
                       "max_abs_diff": float((fused_linear(**args).float() - reference.fused_linear(**args).float())
                                             .abs().max())}
                if sweep and m in (1, 16):
                    row["sweep"] = _sweep(args)
                    row["best"] = min(row["sweep"], key=lambda r: r["ms"] or float("inf"))
                rows_out.append(row)
                print(f"{model} {name:>12} m={m:>2}: fused {fused_ms:.4f} ms "
                      f"({row['bandwidth_fraction']:.0%} of copy bw), cublas {row['cublas_ms']:.4f}, "
                      f"unfused {row['unfused_ms']:.4f}"
                      + (f"; best {row['best']}" if "best" in row else ""))
    record("gpu_fused_linear", {
        "device_facts": device_facts(),
        "copy_bytes_per_s": copy_bw,
        "workload": {"projections": PROJECTIONS, "rows": ROWS, "dtype": "bfloat16",
                     "default_tiles": vars(LinearTiles())},
        "target": "fused_ms <= cublas_ms, bandwidth_fraction >= 0.8 on gate_up and down",
        "rows": rows_out,
    })


def _sweep(args: dict[str, Any]) -> list[dict[str, Any]]:
    results = []
    for tiles in SWEEP:
        try:
            ms = graph_ms(lambda: fused_linear(**args, tiles=tiles))
        except triton.runtime.errors.OutOfResources:  # a setting that does not fit in shared memory
            ms = None
        results.append({**vars(tiles), "ms": ms})
    return results


if __name__ == "__main__":
    main()
