"""The engine's own CPU cost per generated token, with a model that costs almost nothing.

256 concurrent sequences decode through a one-layer, 16-wide Llama, so the
time not spent in the model's forward is what scheduling, block management,
input preparation, sampling, stop checks and detokenization cost: the
overhead a faster model (a GPU) would expose. Each part is timed by wrapping
the engine's own methods; "other" is the rest of step(). The same workload
runs again with every sequence under a structured-output constraint (a regex
the random model can follow for the whole length), side by side: the cost of
the per-step token masks (filled in `sampling_rows`, applied in `sample`,
advanced in `stop_check`).

    python -m bench.engine_overhead [--num-seqs 256] [--prompt-len 512] [--output-len 128]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from dataclasses import replace

from bench.common import Timers, write_result
from pagoda.engine.fixtures import TOKENIZER_VOCAB_SIZE, make_tiny_model
from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import SamplingParams, StructuredOutput

#: Lower-case words for as long as the budget lasts: a constraint that never ends a sequence early.
CONSTRAINT = StructuredOutput(regex="[a-z ]+")
REPEATS = 3
NEAR_ZERO_MODEL = dict(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-seqs", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=128)
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
    runner._sampling_row = timers.wrap("sampling_rows", runner._sampling_row)
    runner.model.forward = timers.wrap("model_forward", runner.model.forward)
    runner.model.compute_logits = timers.wrap("model_forward", runner.model.compute_logits)
    runner.sampler.__class__.__call__ = timers.wrap("sample", runner.sampler.__class__.__call__)
    engine._check_stop = timers.wrap("stop_check", engine._check_stop)
    engine.output_processor.process = timers.wrap("detokenize_and_stop_strings", engine.output_processor.process)
    engine._make_output = timers.wrap("make_outputs", engine._make_output)
    engine.step = timers.wrap("step_total", engine.step)
    configs = {"unconstrained": params, "structured_output": replace(params, structured_output=CONSTRAINT)}
    llm.generate(prompts[:4], configs["structured_output"])  # compiles the constraint once, outside the timing
    runs: dict[str, dict] = {}
    # Interleaved repeats, the fastest of each kept: one run alone is at the
    # mercy of the garbage collector and whatever else the machine does.
    for _ in range(REPEATS):
        for name, run_params in configs.items():
            totals.clear()
            start = time.perf_counter()
            outputs = llm.generate(prompts, run_params)
            wall = time.perf_counter() - start
            tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
            overhead = totals["step_total"] - totals["model_forward"]
            parts = {k: v for k, v in totals.items() if k not in ("step_total", "model_forward")}
            parts["other"] = overhead - sum(parts.values())
            run = {
                "output_tokens": tokens,
                "wall_seconds": wall,
                "model_forward_us_per_token": 1e6 * totals["model_forward"] / tokens,
                "overhead_us_per_token": 1e6 * overhead / tokens,
                "overhead_breakdown_us_per_token": {k: 1e6 * v / tokens for k, v in parts.items()},
            }
            if name not in runs or run["overhead_us_per_token"] < runs[name]["overhead_us_per_token"]:
                runs[name] = run
    for name, run in runs.items():
        print(f"{name}: {run['output_tokens']} tokens, {args.num_seqs} sequences, wall {run['wall_seconds']:.2f}s")
        print(f"model forward      {run['model_forward_us_per_token']:8.1f} us/token")
        print(f"engine overhead    {run['overhead_us_per_token']:8.1f} us/token  "
              f"({1e6 / run['overhead_us_per_token']:.0f} tokens/s ceiling)")
        for part, us in sorted(run["overhead_breakdown_us_per_token"].items(), key=lambda kv: -kv[1]):
            print(f"  {part:28s} {us:8.1f} us/token")
    ratio = runs["structured_output"]["overhead_us_per_token"] / runs["unconstrained"]["overhead_us_per_token"]
    print(f"structured output: {ratio:.2f}x the unconstrained overhead per token")
    path = write_result("engine_overhead", {
        "workload": {"num_seqs": args.num_seqs, "prompt_len": args.prompt_len, "output_len": args.output_len,
                     "constraint": {"regex": CONSTRAINT.regex}, "repeats": f"best of {REPEATS}, interleaved"},
        "model": {"arch": "llama", **NEAR_ZERO_MODEL},
        **runs["unconstrained"],
        "structured_output": runs["structured_output"],
        "structured_output_overhead_ratio": ratio,
    })
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
