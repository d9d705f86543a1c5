"""End-to-end generation throughput on CPU: pagoda against Hugging Face, same model, same workload.

Three systems run the identical request set in one process, one after another:
  * pagoda's offline LLM (paged KV cache, continuous batching, prefix caching),
  * transformers `generate` with a static, left-padded batch (the classic way),
  * transformers `generate_batch` (its own continuous batching with a paged cache).
Every request has its own random-token prompt (uniform lengths) and the same number
of output tokens with EOS ignored, so all three do exactly the same useful work;
the reported figure is useful output tokens per second and the ratios between them.

    python -m bench.cpu_throughput [--arch llama|deepseek_v3|gpt_oss|qwen3_5|granitemoehybrid|gemma4|kimi_linear|
                                           olmo_hybrid|minimax_m2] [--num-seqs 32]
                                   [--output-len 32]

With --arch deepseek_v3 the model is DeepSeek-V3-shaped (latent attention, grouped sigmoid router,
shared expert, a dense first layer), and the record adds the KV-cache bytes per token that latent
caching saves at the real models' shapes (counted, not measured).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from bench.common import load_hf_paged, write_result
from pagoda.engine.fixtures import TOKENIZER_VOCAB_SIZE, make_tiny_model
from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import SamplingParams

# A small Llama (about 14M parameters): big enough that the model, not Python, dominates.
MODEL_SHAPE = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4)
# The same size with DeepSeek-V3's structure: a 64-wide latent, 32+16-wide query/key heads, 16 experts
# (4 routed per token, in 4 groups of which 2 are searched) beside one shared expert.
SHAPES = {
    "llama": MODEL_SHAPE,
    "deepseek_v3": dict(MODEL_SHAPE, num_key_value_heads=8, q_lora_rank=128, kv_lora_rank=64, qk_nope_head_dim=32,
                        qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=16, num_experts_per_tok=4, n_group=4,
                        topk_group=2, moe_intermediate_size=192, first_k_dense_replace=1,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    # GPT-OSS's structure at that size: sinks, 64-wide heads, sliding (window 128) and full layers
    # alternating, 16 biased experts with the clamped SwiGLU (4 routed per token).
    "gpt_oss": dict(MODEL_SHAPE, head_dim=64, num_local_experts=16, num_experts_per_tok=4, intermediate_size=192,
                    sliding_window=128, swiglu_limit=7.0),
    # Hybrids: Qwen3.5's three Gated DeltaNet layers to one gated attention layer (rotary over a quarter of
    # 64-wide heads; 4 key and 8 value heads of 32 in the linear attention), and Granite 4.0-H's (Micro's
    # dense) Mamba-2 layers around one attention layer (8 heads of 64, state 64, chunks of 64).
    "qwen3_5": dict(MODEL_SHAPE, head_dim=64, linear_num_key_heads=4, linear_num_value_heads=8,
                    linear_key_head_dim=32, linear_value_head_dim=32),
    # Gemma 4 E2B's structure at that size: sliding (window 128, heads of 32) and global (heads of 64,
    # proportional RoPE) layers alternating, the last two reading the first two's K/V with double-wide
    # MLPs, per-layer embeddings of 64 per layer.
    "gemma4": dict(MODEL_SHAPE, head_dim=32, global_head_dim=64, sliding_window=128, num_kv_shared_layers=2,
                   layer_types=["sliding_attention", "full_attention"] * 2, hidden_size_per_layer_input=64),
    # Kimi Linear's: three KDA layers (4 heads of 64, a decay per key channel) to one NoPE latent attention layer
    # (64-wide latent), 16 experts (4 a token) behind V3's router and a shared expert after a dense first MLP.
    "kimi_linear": dict(MODEL_SHAPE, layer_types=["linear_attention", "linear_attention", "full_attention",
                                                  "linear_attention"], linear_num_heads=4, linear_head_dim=64,
                        num_key_value_heads=8, kv_lora_rank=64, q_lora_rank=None, qk_nope_head_dim=32,
                        qk_rope_head_dim=16, v_head_dim=32,
                        num_local_experts=16, num_experts_per_tok=4, moe_intermediate_size=192, n_shared_experts=1,
                        mlp_layer_types=["dense", "sparse", "sparse", "sparse"]),
    # OLMo Hybrid's: Gated DeltaNet layers (4 key and 8 value heads of 32) around one NoPE attention layer.
    "olmo_hybrid": dict(MODEL_SHAPE, layer_types=["linear_attention", "linear_attention", "full_attention",
                                                  "linear_attention"], linear_num_key_heads=4,
                        linear_num_value_heads=8, linear_key_head_dim=32, linear_value_head_dim=32,
                        rope_parameters={"rope_type": "default", "rope_theta": None}),
    # MiniMax-M2's: whole-projection q/k norms, half of each 64-wide head rotated, 16 experts (4 a token).
    "minimax_m2": dict(MODEL_SHAPE, head_dim=64, num_local_experts=16, num_experts_per_tok=4, intermediate_size=192,
                       rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "partial_rotary_factor": 0.5}),
    "granitemoehybrid": dict(MODEL_SHAPE, layer_types=["mamba", "mamba", "attention", "mamba"], mamba_n_heads=8,
                             mamba_n_groups=1, mamba_d_state=64, mamba_chunk_size=64, num_local_experts=0,
                             shared_intermediate_size=768),
}
# (layers, attention heads, kv_lora_rank + qk_rope_head_dim, qk head dim, v head dim) of config.json.
MLA_MODELS = {"DeepSeek-V3 / R1": (61, 128, 576, 192, 128), "DeepSeek-V2-Lite": (27, 16, 576, 192, 128),
              "Kimi-K2": (61, 64, 576, 192, 128)}


def latent_cache_bytes() -> dict[str, dict[str, float]]:
    """bf16 KV-cache bytes per token: the latent (pagoda) against per-head K and V (engines without MLA)."""
    table = {}
    for name, (layers, heads, latent, qk, v) in MLA_MODELS.items():
        ours, per_head = 2 * layers * latent, 2 * layers * heads * (qk + v)
        table[name] = {"latent_bytes": ours, "per_head_kv_bytes": per_head, "ratio": per_head / ours}
    return table


def workload(num_seqs: int, min_prompt: int, max_prompt: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(5, TOKENIZER_VOCAB_SIZE) for _ in range(rng.randint(min_prompt, max_prompt))] for _ in range(num_seqs)]


def run_pagoda(path: str, prompts: list[list[int]], output_len: int) -> dict:
    llm = LLM(path, dtype="float32")
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    llm.generate([prompts[0]], SamplingParams(max_tokens=2))  # warm-up
    llm.engine.block_manager.reset_prefix_cache()
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    elapsed = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {"output_tokens": tokens, "seconds": elapsed, "output_tokens_per_s": tokens / elapsed,
            "first_outputs": [o.outputs[0].token_ids[:8] for o in outputs[:2]]}


def _hf_config(output_len: int) -> GenerationConfig:
    return GenerationConfig(do_sample=False, max_new_tokens=output_len, min_new_tokens=output_len, eos_token_id=None, pad_token_id=0)


@torch.inference_mode()
def run_hf_generate(path: str, prompts: list[list[int]], output_len: int, batch_size: int) -> dict:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model.generate(torch.tensor([prompts[0]]), generation_config=_hf_config(2))
    start = time.perf_counter()
    first = []
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i : i + batch_size]
        width = max(map(len, batch))
        ids = torch.tensor([[0] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=_hf_config(output_len))
        first.extend(out[:, width : width + 8].tolist())
    elapsed = time.perf_counter() - start
    tokens = len(prompts) * output_len
    return {"output_tokens": tokens, "seconds": elapsed, "output_tokens_per_s": tokens / elapsed,
            "batch_size": batch_size, "first_outputs": first[:2]}


def run_hf_generate_batch(path: str, prompts: list[list[int]], output_len: int) -> dict:
    model = load_hf_paged(path, torch.float32)
    config = _hf_config(output_len)
    try:
        model.generate_batch(inputs=[prompts[0]], generation_config=_hf_config(2))
    # Its paged cache refuses recurrent layers ("Invalid layer type: linear_attention") and layers of
    # different head sizes (Gemma 4: "per-layer attribute ... head_dim", a RuntimeError).
    except (ValueError, RuntimeError) as error:
        return {"output_tokens": 0, "failed": True, "error": str(error)}
    start = time.perf_counter()
    results = model.generate_batch(inputs=prompts, generation_config=config)
    elapsed = time.perf_counter() - start
    tokens = sum(len(r.generated_tokens) for r in results.values())
    if tokens == 0:  # its paged cache serves no latent attention: every request fails (logged by transformers)
        return {"output_tokens": 0, "failed": True}
    return {"output_tokens": tokens, "seconds": elapsed, "output_tokens_per_s": tokens / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(SHAPES), default="llama")
    parser.add_argument("--num-seqs", type=int, default=32)
    parser.add_argument("--min-prompt", type=int, default=16)
    parser.add_argument("--max-prompt", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--hf-batch-size", type=int, default=32)
    args = parser.parse_args()
    prompts = workload(args.num_seqs, args.min_prompt, args.max_prompt)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(make_tiny_model(tmp, args.arch, **SHAPES[args.arch]))
        systems = {
            "pagoda": run_pagoda(path, prompts, args.output_len),
            "hf_generate": run_hf_generate(path, prompts, args.output_len, args.hf_batch_size),
            "hf_generate_batch": run_hf_generate_batch(path, prompts, args.output_len),
        }
    base = systems["pagoda"]["output_tokens_per_s"]
    for name, result in systems.items():
        if result.get("failed"):
            print(f"{name:18s}    failed: no output")
            continue
        result["pagoda_speedup"] = base / result["output_tokens_per_s"]
        print(f"{name:18s} {result['output_tokens_per_s']:9.1f} tok/s   pagoda is {result['pagoda_speedup']:.2f}x")
    same = systems["pagoda"]["first_outputs"] == systems["hf_generate"]["first_outputs"]
    print(f"greedy outputs of pagoda and hf_generate agree on the first requests: {same}")
    record = {
        "workload": {"num_seqs": args.num_seqs, "prompt_len": [args.min_prompt, args.max_prompt],
                     "output_len": args.output_len, "ignore_eos": True, "prompts": "random tokens"},
        "model": {"arch": args.arch, **SHAPES[args.arch], "dtype": "float32"},
        "systems": systems,
        "outputs_agree": same,
    }
    if args.arch == "deepseek_v3":
        record["counted_kv_bytes_per_token"] = latent_cache_bytes()
        for name, row in record["counted_kv_bytes_per_token"].items():
            print(f"{name:18s} {row['latent_bytes']:>9,} B/token latent vs {row['per_head_kv_bytes']:>11,} per-head "
                  f"({row['ratio']:.0f}x)")
    path = write_result("cpu_throughput" if args.arch == "llama" else f"cpu_throughput_{args.arch}", record)
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
