"""Prefix caching for hybrid models (recurrent states resumed from snapshots) against none, side by side
in one run, on a multi-turn chat workload.

A Qwen3.5-shaped random model (bench.cpu_throughput's "qwen3_5" shape: three Gated DeltaNet layers to
one gated attention layer) serves --conversations conversations of --turns turns: each turn's prompt is
the previous turn's prompt, its answer and a new user message of 32 to 64 random tokens (the first
turn: a shared 256-token system prompt and a message); 16 output tokens a turn, greedy, EOS ignored.
Every conversation's turn t runs in one batch, after turn t - 1's. Reported per system: the prompt
tokens computed, how many came from the cache, and the wall time of turns 2 on, and whether both
systems produced the same tokens.

    python -m bench.recurrent_prefix_cache [--conversations 16] [--turns 4]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

from bench.common import write_result
from bench.cpu_throughput import SHAPES
from pagoda.engine.fixtures import TOKENIZER_VOCAB_SIZE, make_tiny_model
from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import SamplingParams

OUTPUT_LEN = 16
SYSTEM_PROMPT_LEN = 256


def converse(llm: LLM, conversations: int, turns: int, seed: int = 0) -> dict:
    """Runs the workload: (seconds of turns 2 on, prompt tokens, cached prompt tokens, every answer)."""
    rng = random.Random(seed)
    system = [rng.randrange(5, TOKENIZER_VOCAB_SIZE) for _ in range(SYSTEM_PROMPT_LEN)]
    histories = [list(system) for _ in range(conversations)]
    params = SamplingParams(temperature=0.0, max_tokens=OUTPUT_LEN, ignore_eos=True)
    stats = llm.engine.block_manager.stats
    answers, later_seconds, prompt_tokens = [], 0.0, 0
    cached_before = stats.hits
    for turn in range(turns):
        for history in histories:
            history.extend(rng.randrange(5, TOKENIZER_VOCAB_SIZE) for _ in range(rng.randint(32, 64)))
        start = time.perf_counter()
        outs = llm.generate([{"prompt_token_ids": list(h)} for h in histories], params)
        if turn > 0:
            later_seconds += time.perf_counter() - start
        prompt_tokens += sum(len(h) for h in histories)
        for history, out in zip(histories, outs):
            history.extend(out.outputs[0].token_ids)
            answers.append(out.outputs[0].token_ids)
    return {"later_turns_seconds": later_seconds, "prompt_tokens": prompt_tokens,
            "cached_prompt_tokens": stats.hits - cached_before, "answers": answers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=16)
    parser.add_argument("--turns", type=int, default=4)
    args = parser.parse_args()
    systems = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = str(make_tiny_model(tmp, "qwen3_5", **SHAPES["qwen3_5"]))
        for name, caching in (("prefix_caching", True), ("no_prefix_caching", False)):
            llm = LLM(path, dtype="float32", enable_prefix_caching=caching, max_model_len=2048)
            llm.generate([[5, 6, 7]], SamplingParams(max_tokens=2))  # warm-up
            llm.engine.block_manager.reset_prefix_cache()
            systems[name] = converse(llm, args.conversations, args.turns)
    same = systems["prefix_caching"].pop("answers") == systems["no_prefix_caching"].pop("answers")
    base = systems["no_prefix_caching"]["later_turns_seconds"]
    for name, result in systems.items():
        result["speedup_of_later_turns"] = base / result["later_turns_seconds"]
        print(f"{name:18s} turns 2..{args.turns}: {result['later_turns_seconds']:6.2f} s "
              f"({result['speedup_of_later_turns']:.2f}x), {result['cached_prompt_tokens']} of "
              f"{result['prompt_tokens']} prompt tokens from the cache")
    print(f"the same answers with and without the cache: {same}")
    record = {
        "workload": {"conversations": args.conversations, "turns": args.turns, "system_prompt": SYSTEM_PROMPT_LEN,
                     "message_len": [32, 64], "output_len": OUTPUT_LEN, "prompts": "random tokens"},
        "model": {"arch": "qwen3_5", **SHAPES["qwen3_5"], "dtype": "float32"},
        "systems": systems,
        "answers_agree": same,
    }
    print(f"recorded in {write_result('recurrent_prefix_cache_cpu', record)}")


if __name__ == "__main__":
    main()
