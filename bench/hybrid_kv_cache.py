"""Sliding-window layers keeping only their window's blocks (the hybrid KV-cache layout) against every
layer keeping every block, side by side in one run.

1. Measured (CPU): a Gemma-3-shaped random model (five sliding layers to one global, window 64) under
   one KV-cache memory budget that holds 8 of the workload's sequences whole; 32 requests of 256 to
   512 random prompt tokens and 128 output tokens, greedy, EOS ignored, best of --repeats interleaved
   runs. Reported: output tokens/s, preemptions, the most sequences running at once, and whether
   both produced the same tokens.
2. Counted: KV-cache bytes one sequence holds at 8k, 32k and 128k tokens under each layout, for the
   attention shapes of Gemma 3's config.json files (layers, KV heads, head_dim, window; every 6th
   layer global; bf16 cache, blocks of 16; chunks of 2048 tokens a step).

    python -m bench.hybrid_kv_cache [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

from bench.common import write_result
from bench.cpu_throughput import MODEL_SHAPE, workload
from pagoda.engine.fixtures import make_tiny_model
from pagoda.engine.kv_cache_layout import plan_kv_cache
from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import SamplingParams

WINDOW = 64
LAYER_TYPES = ["sliding_attention"] * 5 + ["full_attention"]
# (layers, KV heads, head_dim, sliding window) of google/gemma-3-{1b,4b,12b,27b}'s config.json.
GEMMA3 = {"gemma-3-1b": (26, 1, 256, 512), "gemma-3-4b": (34, 4, 256, 1024), "gemma-3-12b": (48, 8, 256, 1024),
          "gemma-3-27b": (62, 16, 128, 1024)}


def run(llm: LLM, prompts: list[list[int]], params: SamplingParams) -> tuple[float, list[list[int]], int, int]:
    """(output tokens/s, tokens, preemptions, most sequences running at once) of one pass."""
    engine = llm.engine
    engine.block_manager.reset_prefix_cache()
    scheduler = engine.scheduler
    preempted_before, peak = scheduler.num_preemptions, 0
    schedule = scheduler.schedule

    def counted() -> Any:
        nonlocal peak
        out = schedule()
        peak = max(peak, len(scheduler.running))
        return out

    scheduler.schedule = counted
    try:
        start = time.perf_counter()
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
        elapsed = time.perf_counter() - start
    finally:
        del scheduler.schedule
    tokens = [o.outputs[0].token_ids for o in outputs]
    return sum(map(len, tokens)) / elapsed, tokens, scheduler.num_preemptions - preempted_before, peak


def counted_bytes() -> dict[str, Any]:
    """Per Gemma 3 size and context length: KV bytes of one sequence, hybrid and plain."""
    table: dict[str, Any] = {}
    for name, (layers, kv_heads, head_dim, window) in GEMMA3.items():
        windows = [None if (i + 1) % 6 == 0 else window for i in range(layers)]
        layer_block = 2 * kv_heads * head_dim * 2 * 16  # K and V, bf16, 16 tokens
        row = {}
        for context in (8192, 32768, 131072):
            hybrid = plan_kv_cache(windows)
            plain = plan_kv_cache(windows, hybrid=False)
            sizes = {kind: layout.blocks_for(context, 2048, 16) * layout.group_size * layer_block
                     for kind, layout in (("hybrid", hybrid), ("plain", plain))}
            row[context] = {**{f"{k}_gib": v / 2**30 for k, v in sizes.items()}, "ratio": sizes["plain"] / sizes["hybrid"]}
        table[name] = {"layers": layers, "kv_heads": kv_heads, "head_dim": head_dim, "window": window,
                       "per_sequence": row}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    prompts = workload(32, 256, 512)
    params = SamplingParams(temperature=0.0, max_tokens=128, ignore_eos=True)
    shape = {**MODEL_SHAPE, "num_hidden_layers": len(LAYER_TYPES), "layer_types": LAYER_TYPES,
             "sliding_window": WINDOW, "head_dim": MODEL_SHAPE["hidden_size"] // MODEL_SHAPE["num_attention_heads"]}
    with tempfile.TemporaryDirectory() as tmp:
        path = make_tiny_model(f"{tmp}/gemma3", "gemma3", **shape)
        # 8 whole sequences of the longest kind (512 + 128 tokens) under the plain layout.
        plain_blocks = 8 * (512 + 128) // 16
        per_block = 2 * len(LAYER_TYPES) * shape["num_key_value_heads"] * shape["head_dim"] * 4 * 16
        budget = plain_blocks * per_block
        systems = {name: LLM(str(path), dtype="float32", kv_cache_memory_bytes=budget, max_model_len=1024,
                             disable_hybrid_kv_cache_manager=name == "plain") for name in ("hybrid", "plain")}
        best: dict[str, dict[str, Any]] = {}
        outputs = {}
        for _ in range(args.repeats):
            for name, llm in systems.items():
                rate, tokens, preemptions, peak = run(llm, prompts, params)
                outputs[name] = tokens
                if rate > best.get(name, {}).get("output_tokens_per_s", 0.0):
                    best[name] = {"output_tokens_per_s": rate, "preemptions": preemptions, "peak_running": peak,
                                  "kv_blocks": llm.engine.runner.num_blocks,
                                  "layers_per_block": llm.engine.runner.layout.group_size}
        same = outputs["hybrid"] == outputs["plain"]
        for name, r in best.items():
            print(f"{name:6s} {r['output_tokens_per_s']:8.1f} tok/s  preemptions {r['preemptions']:4d}  "
                  f"peak running {r['peak_running']:3d}  ({r['kv_blocks']} blocks of {r['layers_per_block']} layers)")
        speedup = best["hybrid"]["output_tokens_per_s"] / best["plain"]["output_tokens_per_s"]
        print(f"hybrid / plain: {speedup:.2f}x; same tokens: {same}")
    counted = counted_bytes()
    for name, row in counted.items():
        print(name, "  ".join(f"{ctx // 1024}k: {r['plain_gib']:.2f} -> {r['hybrid_gib']:.2f} GiB ({r['ratio']:.1f}x)"
                              for ctx, r in row["per_sequence"].items()))
    path = write_result("hybrid_kv_cache_cpu", {
        "workload": {"num_seqs": 32, "prompt_len": [256, 512], "output_len": 128, "greedy": True,
                     "ignore_eos": True, "prompts": "random tokens", "repeats": args.repeats,
                     "kv_cache_memory_bytes": budget},
        "model": {"arch": "gemma3", **shape, "dtype": "float32"},
        "systems": best, "hybrid_over_plain": speedup, "same_tokens": same,
        "counted_gemma3_per_sequence": counted,
    })
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
