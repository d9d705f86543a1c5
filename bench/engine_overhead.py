"""The engine's own CPU cost per generated token, with a model that costs almost nothing.

256 concurrent sequences decode through a one-layer, 16-wide Llama, so the
time not spent in the model's forward is what scheduling, block management,
input preparation, sampling, stop checks and detokenization cost: the
overhead a faster model (a GPU) would expose. Each part is timed by wrapping
the engine's own methods; "other" is the rest of step().

    python -m bench.engine_overhead [--num-seqs 256] [--output-len 64]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

from bench.common import Timers, write_result
from pagoda.engine.fixtures import TOKENIZER_VOCAB_SIZE, make_tiny_model
from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import SamplingParams

NEAR_ZERO_MODEL = dict(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-seqs", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=64)
    args = parser.parse_args()
    rng = random.Random(0)
    prompts = [{"prompt_token_ids": [rng.randrange(5, TOKENIZER_VOCAB_SIZE) for _ in range(args.prompt_len)]} for _ in range(args.num_seqs)]
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    with tempfile.TemporaryDirectory() as tmp:
        llm = LLM(str(make_tiny_model(tmp, "llama", **NEAR_ZERO_MODEL)), dtype="float32", max_num_seqs=args.num_seqs)
    llm.generate(prompts[:4], params)  # warm-up
    engine, runner = llm.engine, llm.engine.runner
    timers = Timers()
    totals = timers.seconds
    engine.scheduler.schedule = timers.wrap("schedule", engine.scheduler.schedule)
    runner._build_inputs = timers.wrap("prepare_inputs", runner._build_inputs)
    runner.model.forward = timers.wrap("model_forward", runner.model.forward)
    runner.model.compute_logits = timers.wrap("model_forward", runner.model.compute_logits)
    runner.sampler.__class__.__call__ = timers.wrap("sample", runner.sampler.__class__.__call__)
    engine._check_stop = timers.wrap("stop_check", engine._check_stop)
    engine.output_processor.process = timers.wrap("detokenize_and_stop_strings", engine.output_processor.process)
    engine._make_output = timers.wrap("make_outputs", engine._make_output)
    engine.step = timers.wrap("step_total", engine.step)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    wall = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    overhead = totals["step_total"] - totals["model_forward"]
    parts = {k: v for k, v in totals.items() if k not in ("step_total", "model_forward")}
    parts["other"] = overhead - sum(parts.values())
    per_token_us = {k: 1e6 * v / tokens for k, v in parts.items()}
    print(f"{tokens} tokens, {args.num_seqs} sequences, wall {wall:.2f}s")
    print(f"model forward      {1e6 * totals['model_forward'] / tokens:8.1f} us/token")
    print(f"engine overhead    {1e6 * overhead / tokens:8.1f} us/token  ({tokens / overhead:.0f} tokens/s ceiling)")
    for name, us in sorted(per_token_us.items(), key=lambda kv: -kv[1]):
        print(f"  {name:24s} {us:8.1f} us/token")
    path = write_result("engine_overhead", {
        "workload": {"num_seqs": args.num_seqs, "prompt_len": args.prompt_len, "output_len": args.output_len},
        "model": {"arch": "llama", **NEAR_ZERO_MODEL},
        "output_tokens": tokens,
        "wall_seconds": wall,
        "model_forward_us_per_token": 1e6 * totals["model_forward"] / tokens,
        "overhead_us_per_token": 1e6 * overhead / tokens,
        "overhead_breakdown_us_per_token": per_token_us,
    })
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
