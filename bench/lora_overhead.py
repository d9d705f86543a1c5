"""What serving LoRA adapters costs: generation throughput with and without them, side by side.

Same model, same requests, one process, best of --repeats interleaved runs:
  * base: the engine without LoRA;
  * lora_enabled: LoRA slots allocated, no request uses them (the cost of being ready);
  * lora_one: every request with the same adapter;
  * lora_mixed: requests spread round-robin over --adapters adapters, all in the batch at once.
Every projection adds ((x A_all^T) * mask) B_all^T over all max_loras slots, so
its extra FLOPs per token are max_loras * rank * (parts * in + out) against
in * out for the projection itself; that ratio is printed for this model and for
Llama-3.2-1B's shape, where the GPU benchmark (bench/gpu_throughput.py,
system pagoda_lora) measures it.

    python -m bench.lora_overhead [--num-seqs 32] [--output-len 32] [--adapters 4] [--rank 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

from bench.common import write_result
from bench.cpu_throughput import MODEL_SHAPE, workload
from pagoda.engine.fixtures import make_tiny_lora, make_tiny_model
from pagoda.engine.llm import LLM
from pagoda.engine.lora import LoRARequest
from pagoda.engine.sampling_params import SamplingParams

LLAMA_3_2_1B = dict(hidden_size=2048, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=8)


def flop_overhead(shape: dict[str, int], slots: int, rank: int) -> float:
    """Extra multiply-adds of the LoRA path over the projections' own, per token and layer."""
    h, i = shape["hidden_size"], shape["intermediate_size"]
    head_dim = h // shape["num_attention_heads"]
    q, kv = h, shape["num_key_value_heads"] * head_dim
    # (in, parts, out) of qkv, o, gate_up and down.
    projections = [(h, 3, q + 2 * kv), (q, 1, h), (h, 2, 2 * i), (i, 1, h)]
    base = sum(fan_in * out for fan_in, _, out in projections)
    lora = sum(slots * rank * (parts * fan_in + out) for fan_in, parts, out in projections)
    return lora / base


def run(llm: LLM, prompts: list[list[int]], params: SamplingParams, loras: list[LoRARequest | None]) -> float:
    llm.engine.block_manager.reset_prefix_cache()
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, lora_request=loras)
    elapsed = time.perf_counter() - start
    return sum(len(o.outputs[0].token_ids) for o in outputs) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-seqs", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    prompts = workload(args.num_seqs, 16, 256)
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(make_tiny_model(f"{tmp}/model", "llama", **MODEL_SHAPE))
        adapters = [LoRARequest(f"lora{i}", str(make_tiny_lora(path, f"{tmp}/lora{i}", rank=args.rank, seed=i)))
                    for i in range(args.adapters)]
        base = LLM(path, dtype="float32")
        lora = LLM(path, dtype="float32", enable_lora=True, max_loras=args.adapters, max_lora_rank=args.rank)
        systems: dict[str, tuple[LLM, list[LoRARequest | None]]] = {
            "base": (base, [None] * len(prompts)),
            "lora_enabled": (lora, [None] * len(prompts)),
            "lora_one": (lora, [adapters[0]] * len(prompts)),
            "lora_mixed": (lora, [adapters[i % len(adapters)] for i in range(len(prompts))]),
        }
        for llm, loras in systems.values():  # warm-up, adapters read and placed
            llm.generate([{"prompt_token_ids": prompts[0]}], SamplingParams(max_tokens=2), lora_request=loras[:1])
        best: dict[str, float] = {name: 0.0 for name in systems}
        for _ in range(args.repeats):
            for name, (llm, loras) in systems.items():
                best[name] = max(best[name], run(llm, prompts, params, loras))
    results: dict[str, Any] = {}
    for name, rate in best.items():
        results[name] = {"output_tokens_per_s": rate, "slowdown_vs_base": best["base"] / rate}
        print(f"{name:14s} {rate:9.1f} tok/s   {best['base'] / rate:.2f}x the base's time")
    flops = {"this_model": flop_overhead(MODEL_SHAPE, args.adapters, args.rank),
             "llama_3_2_1b_shape": flop_overhead(LLAMA_3_2_1B, args.adapters, args.rank)}
    print(f"LoRA FLOPs over the projections': {flops['this_model']:.1%} here, "
          f"{flops['llama_3_2_1b_shape']:.1%} at Llama-3.2-1B's shape")
    path = write_result("lora_overhead_cpu", {
        "workload": {"num_seqs": args.num_seqs, "prompt_len": [16, 256], "output_len": args.output_len,
                     "ignore_eos": True, "prompts": "random tokens", "repeats": args.repeats},
        "model": {"arch": "llama", **MODEL_SHAPE, "dtype": "float32"},
        "lora": {"adapters": args.adapters, "rank": args.rank, "targets": "every attention and MLP projection"},
        "systems": results,
        "lora_flops_over_projections": flops,
    })
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
