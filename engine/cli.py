"""`pagoda generate`: run the offline engine on a model directory from the shell."""

from __future__ import annotations

import argparse
import time


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help="generate completions offline with the engine")
    parser.add_argument("model", help="a Hugging Face model directory")
    parser.add_argument("--prompt", action="append", help="a prompt (repeat for a batch)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> int:
    from pagoda.engine.llm import LLM
    from pagoda.engine.sampling_params import SamplingParams

    llm = LLM(args.model, dtype=args.dtype, device=args.device)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    prompts = args.prompt or ["Hello, my name is"]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    for out in outputs:
        print(f"--- prompt: {out.prompt!r}\n{out.outputs[0].text!r}  [{out.outputs[0].finish_reason}]")
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    print(f"{tokens} tokens in {elapsed:.2f}s ({tokens / elapsed:.1f} tok/s) on {llm.engine.runner.device}")
    return 0
