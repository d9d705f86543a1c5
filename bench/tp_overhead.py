"""Per-step cost of tensor parallelism on CPU: the step broadcast and the collectives.

A near-zero-cost model decodes the same batch with tensor_parallel_size 1 and
N (gloo worker processes on this host). The difference in step time is what
parallelism costs when the model itself costs nothing: the packed step
broadcast to the workers (timed on its own) plus 2 all-reduces per layer, one
for the embedding and one all-gather of the logits.

    python -m bench.tp_overhead [--tp 2] [--num-seqs 64]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

from bench.common import Timers, write_result
from bench.engine_overhead import NEAR_ZERO_MODEL
from pagoda.engine.fixtures import TOKENIZER_VOCAB_SIZE, make_tiny_model
from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import SamplingParams


def measure(path: str, tp: int, prompts: list[dict], params: SamplingParams) -> dict:
    llm = LLM(path, dtype="float32", tensor_parallel_size=tp, max_num_seqs=len(prompts))
    try:
        llm.generate(prompts[:2], params)
        timers = Timers()
        if llm.engine.tp_group is not None:
            llm.engine.tp_group.broadcast = timers.wrap("broadcast", llm.engine.tp_group.broadcast)
        llm.engine.step = timers.wrap("step", llm.engine.step)
        start = time.perf_counter()
        llm.generate(prompts, params)
        elapsed = time.perf_counter() - start
    finally:
        llm.engine.shutdown()
    steps = timers.calls["step"]
    return {"steps": steps, "ms_per_step": 1e3 * elapsed / steps,
            "broadcast_ms_per_step": 1e3 * timers.seconds["broadcast"] / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--num-seqs", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=32)
    args = parser.parse_args()
    rng = random.Random(0)
    prompts = [{"prompt_token_ids": [rng.randrange(5, TOKENIZER_VOCAB_SIZE) for _ in range(16)]} for _ in range(args.num_seqs)]
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(make_tiny_model(tmp, "llama", **NEAR_ZERO_MODEL))
        results = {f"tp{tp}": measure(path, tp, prompts, params) for tp in (1, args.tp)}
    extra = results[f"tp{args.tp}"]["ms_per_step"] - results["tp1"]["ms_per_step"]
    for name, r in results.items():
        print(f"{name}: {r['ms_per_step']:.2f} ms/step, broadcast {r['broadcast_ms_per_step']:.3f} ms/step over {r['steps']} steps")
    print(f"tensor parallelism adds {extra:.2f} ms per step with a near-zero-cost model")
    path = write_result("tp_overhead_cpu", {
        "workload": {"num_seqs": args.num_seqs, "prompt_len": 16, "output_len": args.output_len},
        "model": {"arch": "llama", **NEAR_ZERO_MODEL},
        "collectives_per_step": {"all_reduce": 2 * NEAR_ZERO_MODEL["num_hidden_layers"] + 1, "all_gather": 1, "broadcast": 2},
        "results": results,
        "added_ms_per_step": extra,
    })
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
