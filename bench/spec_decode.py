"""Speculative decoding (n-gram drafts, and a draft model) against plain decoding, side by side.

Same engine settings, same requests, one process, best of --repeats interleaved runs (greedy,
EOS ignored, so both systems produce the same tokens):
  * repetitive: a model rewired to write text that cycles every 5 tokens (engine/fixtures.py
    make_cyclic_model): what drafts from earlier text predict well (code edits, quoting, RAG);
  * random: the random-weight model itself, whose text rarely repeats: what drafts cost when
    they are wrong;
  * draft_model_deep: an 8-layer cyclic model drafted by its own first layer (make_truncated_model,
    as layer-skip self-speculation does): a draft 8 times cheaper than the target that mostly
    agrees with it, as a small model of the target's family does (deeper cyclic models drift
    off their cycle, and their first layer agrees less);
  * draft_model_random: an 8-layer random model drafted by its first layer, which agrees with
    it only now and then: what a poor draft costs.
Reported per kind: output tokens/s of both, the speedup, the share of drafts accepted, and
tokens per verifying pass. On a CPU every extra position costs compute; on a GPU a decode
pass is memory-bound, so verifying k drafts costs about one pass and the speedup approaches
tokens per pass (bench/gpu_throughput would measure it).

    python -m bench.spec_decode [--num-seqs 16] [--output-len 128] [--drafts 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

from bench.common import write_result
from bench.cpu_throughput import MODEL_SHAPE, workload

DEEP_LAYERS = 8  # the draft-model kinds' targets; their drafts are their first layer
from pagoda.engine.fixtures import make_cyclic_model, make_tiny_model, make_truncated_model
from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import SamplingParams
from pagoda.engine.spec_decode import SpecDecodeStats


def run(llm: LLM, prompts: list[list[int]], params: SamplingParams) -> tuple[float, list[list[int]]]:
    llm.engine.block_manager.reset_prefix_cache()
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    elapsed = time.perf_counter() - start
    tokens = [o.outputs[0].token_ids for o in outputs]
    return sum(map(len, tokens)) / elapsed, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-seqs", type=int, default=16)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--drafts", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    prompts = workload(args.num_seqs, 16, 128)
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    ngram = {"method": "ngram", "num_speculative_tokens": args.drafts, "prompt_lookup_max": 4}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        random_model = make_tiny_model(f"{tmp}/random", "llama", **MODEL_SHAPE)
        deep_shape = {**MODEL_SHAPE, "num_hidden_layers": DEEP_LAYERS}
        deep_random = make_tiny_model(f"{tmp}/deep-random", "llama", **deep_shape)
        deep_cyclic = make_cyclic_model(deep_random, f"{tmp}/deep-cyclic", period=5)
        kinds = {  # kind -> (target, speculative_config)
            "repetitive": (make_cyclic_model(random_model, f"{tmp}/cyclic", period=5), ngram),
            "random": (random_model, ngram),
            "draft_model_deep": (deep_cyclic, {"model": str(make_truncated_model(deep_cyclic, f"{tmp}/d1", 1)),
                                               "num_speculative_tokens": args.drafts}),
            "draft_model_random": (deep_random, {"model": str(make_truncated_model(deep_random, f"{tmp}/d2", 1)),
                                                 "num_speculative_tokens": args.drafts}),
        }
        for kind, (path, spec) in kinds.items():
            plain, drafting = LLM(str(path), dtype="float32"), LLM(str(path), dtype="float32", speculative_config=spec)
            best = {"plain": 0.0, "spec": 0.0}
            for _ in range(args.repeats):
                rate_plain, want = run(plain, prompts, params)
                drafting.engine.spec_stats = SpecDecodeStats()  # count the last run only
                rate_spec, got = run(drafting, prompts, params)
                assert got == want, "speculative decoding changed the output"
                best = {"plain": max(best["plain"], rate_plain), "spec": max(best["spec"], rate_spec)}
            stats = drafting.engine.spec_stats
            results[kind] = {
                "speculative_config": {**spec, "model": "first layer of the target"} if "model" in spec else spec,
                "target_layers": DEEP_LAYERS if kind.startswith("draft_model") else MODEL_SHAPE["num_hidden_layers"],
                "plain_output_tokens_per_s": best["plain"], "spec_output_tokens_per_s": best["spec"],
                "speedup": best["spec"] / best["plain"], "acceptance_rate": stats.acceptance_rate,
                "tokens_per_verify_pass": (stats.accepted_tokens + stats.verify_passes) / max(stats.verify_passes, 1),
            }
            r = results[kind]
            print(f"{kind:18s} plain {r['plain_output_tokens_per_s']:8.1f} tok/s  spec "
                  f"{r['spec_output_tokens_per_s']:8.1f} tok/s  {r['speedup']:.2f}x  accepted "
                  f"{r['acceptance_rate']:.0%}  {r['tokens_per_verify_pass']:.2f} tokens per verifying pass")
            del plain, drafting
    path = write_result("spec_decode_cpu", {
        "workload": {"num_seqs": args.num_seqs, "prompt_len": [16, 128], "output_len": args.output_len,
                     "greedy": True, "ignore_eos": True, "prompts": "random tokens", "repeats": args.repeats},
        "model": {"arch": "llama", **MODEL_SHAPE, "dtype": "float32"},
        "kinds": results,
    })
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
