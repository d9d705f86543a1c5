"""End-to-end generation throughput on CPU: pagoda against Hugging Face, same model, same workload.

Three systems run the identical request set in one process, one after another:
  * pagoda's offline LLM (paged KV cache, continuous batching, prefix caching),
  * transformers `generate` with a static, left-padded batch (the classic way),
  * transformers `generate_batch` (its own continuous batching with a paged cache).
Every request has its own random-token prompt (uniform lengths) and the same number
of output tokens with EOS ignored, so all three do exactly the same useful work;
the reported figure is useful output tokens per second and the ratios between them.

    python -m bench.cpu_throughput [--num-seqs 32] [--output-len 32]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from bench.common import write_result
from pagoda.engine.fixtures import TOKENIZER_VOCAB_SIZE, make_tiny_model
from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import SamplingParams

# A small Llama (about 14M parameters): big enough that the model, not Python, dominates.
MODEL_SHAPE = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4)


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
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="paged|sdpa").eval()
    config = _hf_config(output_len)
    model.generate_batch(inputs=[prompts[0]], generation_config=_hf_config(2))
    start = time.perf_counter()
    results = model.generate_batch(inputs=prompts, generation_config=config)
    elapsed = time.perf_counter() - start
    tokens = sum(len(r.generated_tokens) for r in results.values())
    return {"output_tokens": tokens, "seconds": elapsed, "output_tokens_per_s": tokens / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-seqs", type=int, default=32)
    parser.add_argument("--min-prompt", type=int, default=16)
    parser.add_argument("--max-prompt", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--hf-batch-size", type=int, default=32)
    args = parser.parse_args()
    prompts = workload(args.num_seqs, args.min_prompt, args.max_prompt)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(make_tiny_model(tmp, "llama", **MODEL_SHAPE))
        systems = {
            "pagoda": run_pagoda(path, prompts, args.output_len),
            "hf_generate": run_hf_generate(path, prompts, args.output_len, args.hf_batch_size),
            "hf_generate_batch": run_hf_generate_batch(path, prompts, args.output_len),
        }
    base = systems["pagoda"]["output_tokens_per_s"]
    for name, result in systems.items():
        result["pagoda_speedup"] = base / result["output_tokens_per_s"]
        print(f"{name:18s} {result['output_tokens_per_s']:9.1f} tok/s   pagoda is {result['pagoda_speedup']:.2f}x")
    same = systems["pagoda"]["first_outputs"] == systems["hf_generate"]["first_outputs"]
    print(f"greedy outputs of pagoda and hf_generate agree on the first requests: {same}")
    path = write_result("cpu_throughput", {
        "workload": {"num_seqs": args.num_seqs, "prompt_len": [args.min_prompt, args.max_prompt],
                     "output_len": args.output_len, "ignore_eos": True, "prompts": "random tokens"},
        "model": {"arch": "llama", **MODEL_SHAPE, "dtype": "float32"},
        "systems": systems,
        "outputs_agree": same,
    })
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
