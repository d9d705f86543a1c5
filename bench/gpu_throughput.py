"""Throughput on the nano-vllm workload: pagoda against Hugging Face transformers on the same GPU.

Workload (nano-vllm's bench.py): 256 sequences, random-token prompts of
uniform length in 100..1024, output lengths uniform in 100..1024, EOS
ignored, temperature 0.6. Models: Qwen3-0.6B- and Llama-3.2-1B-shaped,
random bf16 weights. Systems, each in its own process (pagoda takes most of
the GPU memory for its KV cache):

- pagoda: the offline LLM (Triton kernels, CUDA graphs, continuous batching);
- pagoda_async: the same with async scheduling (each step launched before the
  previous one's tokens are read back: host work overlaps the GPU's);
- hf_generate: `generate` on static, left-padded batches, each running to
  its longest request (the classic serving loop of the PagedAttention paper);
- hf_generate_batch: transformers' continuous batching (paged cache), each
  request with its own max_new_tokens;
- pagoda_lora: pagoda again, the requests spread round-robin over
  LORA_ADAPTERS random rank-LORA_RANK adapters on every projection (all in
  the batch at once): what serving adapters costs.

Only requested tokens count as output, so all systems do the same useful
work. After its timed run, each pagoda system queues the workload again, steps
until every request is decoding (a full batch), and records --profile-steps
steps under torch.profiler (bench/gpu_profile.py) as "profile": kernels by GPU
time, kernels per step, the GPU-busy fraction and the host ops; the timed run
is not profiled. Hugging Face runs the first --hf-num-seqs requests of the same
workload (its full run would not fit a lease); rates are per second either
way. Targets: >= 24x hf_generate and >= 3x hf_generate_batch.

    python -m bench.gpu_throughput [--models qwen3-0.6b llama-3.2-1b qwen3-30b-a3b-8l gpt-oss-20b-8l] [--hf-num-seqs 64]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch

from bench.common import Timers, load_hf_paged
from bench.gpu_env import device_facts, record
from bench.gpu_models import DEFAULT_MODELS, MODEL_SHAPES, build_model_dir, describe
from bench.gpu_profile import format_profile, profile_steps
from pagoda.engine.fixtures import TOKENIZER_VOCAB_SIZE

SYSTEMS = ("pagoda", "pagoda_async", "hf_generate", "hf_generate_batch", "pagoda_lora")
LORA_ADAPTERS = 4
LORA_RANK = 16
TEMPERATURE = 0.6
MAX_MODEL_LEN = 4096
PROFILE_WARMUP_STEPS = 100  # at most, to reach a full batch of decodes before the profiled steps


def workload(num_seqs: int, seed: int = 0) -> tuple[list[list[int]], list[int]]:
    """Prompts and output lengths; token ids stay inside the fixture tokenizer so detokenizing is real work."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(5, TOKENIZER_VOCAB_SIZE) for _ in range(rng.randint(100, 1024))] for _ in range(num_seqs)]
    outputs = [rng.randint(100, 1024) for _ in range(num_seqs)]
    return prompts, outputs


def _result(useful: int, seconds: float, **extra: Any) -> dict[str, Any]:
    return {"num_seqs": extra.pop("num_seqs"), "output_tokens": useful, "seconds": seconds,
            "output_tokens_per_s": useful / seconds, **extra}


def run_pagoda(path: str, prompts: list[list[int]], outputs: list[int], adapters: int = 0,
               async_scheduling: bool = False, profiled_steps: int = 0) -> dict[str, Any]:
    from pagoda.engine.cuda_graphs import DecodeCudaGraphs
    from pagoda.engine.fixtures import LORA_ATTENTION_TARGETS, LORA_TARGETS, make_tiny_lora
    from pagoda.engine.llm import LLM
    from pagoda.engine.lora import LoRARequest
    from pagoda.engine.model_config import load_model_config
    from pagoda.engine.sampling_params import SamplingParams

    lora_kwargs = {"enable_lora": True, "max_loras": adapters, "max_lora_rank": LORA_RANK} if adapters else {}
    llm = LLM(path, dtype="bfloat16", max_model_len=MAX_MODEL_LEN, max_num_seqs=256, max_num_batched_tokens=16384,
              async_scheduling=async_scheduling, **lora_kwargs)
    # Experts take no adapters: on MoE models they adapt the attention projections only.
    targets = LORA_ATTENTION_TARGETS if load_model_config(path).moe else LORA_TARGETS
    loras = [LoRARequest(f"lora{i}", str(make_tiny_lora(path, pathlib.Path(path).parent / f"lora{i}", rank=LORA_RANK,
                                                        targets=targets, seed=i)))
             for i in range(adapters)]
    per_prompt = [loras[i % adapters] for i in range(len(prompts))] if adapters else None
    llm.generate([{"prompt_token_ids": p} for p in prompts[:2]], SamplingParams(max_tokens=16, ignore_eos=True),
                 lora_request=per_prompt[:2] if per_prompt else None)
    llm.engine.block_manager.reset_prefix_cache()
    params = [SamplingParams(temperature=TEMPERATURE, max_tokens=n, ignore_eos=True) for n in outputs]
    timers = _time_step_phases(llm)
    torch.cuda.synchronize()
    start = time.perf_counter()
    results = llm.generate([{"prompt_token_ids": p} for p in prompts], params, lora_request=per_prompt)
    seconds = time.perf_counter() - start
    generated = sum(len(r.outputs[0].token_ids) for r in results)
    result = _result(generated, seconds, num_seqs=len(prompts), requested_tokens=sum(outputs),
                     engine={"max_num_seqs": 256, "max_num_batched_tokens": 16384, "num_kv_blocks": llm.engine.runner.num_blocks,
                             "cuda_graphs": isinstance(llm.engine.runner.forward, DecodeCudaGraphs),
                             "lora_adapters": adapters, "lora_rank": LORA_RANK if adapters else None,
                             "async_scheduling": llm.engine.async_scheduling},
                     steps=timers.calls["step"], step_phases_s=dict(timers.seconds))
    if profiled_steps:
        result["profile"] = _profile_full_batch(llm, prompts, outputs, per_prompt, profiled_steps)
    return result


def _profile_full_batch(llm: Any, prompts: list[list[int]], outputs: list[int], loras: list[Any] | None,
                        steps: int) -> dict[str, Any]:
    """`steps` engine steps under the profiler, once the workload, queued again, is all decoding: the steady
    state most of the timed run's steps are in, without profiling (and slowing) the timed run itself. The
    requests are aborted afterwards. Its wall time per step is the profiled one, longer than the timed run's."""
    from pagoda.engine.sampling_params import RequestOutputKind, SamplingParams

    engine = llm.engine
    ids = [f"profile-{i}" for i in range(len(prompts))]
    for i, (request_id, prompt, n) in enumerate(zip(ids, prompts, outputs)):
        # Final outputs only, as LLM.generate asks in the timed run: no per-step outputs to build.
        params = SamplingParams(temperature=TEMPERATURE, max_tokens=n, ignore_eos=True,
                                output_kind=RequestOutputKind.FINAL_ONLY)
        engine.add_request(request_id, {"prompt_token_ids": prompt}, params, lora_request=loras[i] if loras else None)
    scheduler = engine.scheduler
    for _ in range(PROFILE_WARMUP_STEPS):
        if not scheduler.waiting and all(seq.num_output_tokens for seq in scheduler.running):
            break
        engine.step()
    summary = {"batch": len(scheduler.running), **profile_steps(engine.step, steps)}
    for request_id in ids:
        engine.abort_request(request_id)
    return summary


def _time_step_phases(llm: Any) -> Timers:
    """Host wall time of each phase of the engine's steps. The GPU runs asynchronously until the sampler
    reads the sampled tokens back, so `sample` holds the wait for the forward pass: a large `sample` and
    small others say the run is GPU-bound; the others (scheduling, inputs, the launches, output handling:
    `step` minus the rest) are the host time a faster GPU step would expose."""
    timers = Timers()
    engine, runner = llm.engine, llm.engine.runner
    engine.scheduler.schedule = timers.wrap("schedule", engine.scheduler.schedule)
    runner._build_inputs = timers.wrap("build_inputs", runner._build_inputs)
    runner.forward_logits = timers.wrap("launch_forward", runner.forward_logits)
    runner._sample = timers.wrap("sample", runner._sample)
    engine.step = timers.wrap("step", engine.step)
    return timers


def _hf_config(max_new_tokens: int, min_new_tokens: int = 0) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(do_sample=True, temperature=TEMPERATURE, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                            min_new_tokens=min_new_tokens, eos_token_id=None, pad_token_id=0)


@torch.inference_mode()
def run_hf_generate(path: str, prompts: list[list[int]], outputs: list[int], batch_size: int) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda().eval()
    model.generate(torch.tensor([prompts[0][:16]], device="cuda"), generation_config=_hf_config(4, 4))
    torch.cuda.synchronize()
    start = time.perf_counter()
    generated = 0
    for i in range(0, len(prompts), batch_size):
        batch, lens = prompts[i : i + batch_size], outputs[i : i + batch_size]
        width = max(map(len, batch))
        ids = torch.tensor([[0] * (width - len(p)) + p for p in batch], device="cuda")
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device="cuda")
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=_hf_config(max(lens), max(lens)))
        generated += (out.shape[1] - width) * len(batch)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return _result(sum(outputs), seconds, num_seqs=len(prompts), batch_size=batch_size, generated_tokens=generated)


def run_hf_generate_batch(path: str, prompts: list[list[int]], outputs: list[int]) -> dict[str, Any]:
    model = load_hf_paged(path, torch.bfloat16).cuda()
    manager = model.init_continuous_batching(generation_config=_hf_config(max(outputs)))
    manager.start()
    try:
        def run(batch: list[list[int]], lens: list[int]) -> int:
            ids = {manager.add_request(p, request_id=f"r{i}-{time.monotonic_ns()}", max_new_tokens=n): n
                   for i, (p, n) in enumerate(zip(batch, lens))}
            generated = 0
            while ids:
                result = manager.get_result(timeout=1)
                if result is None:
                    if not manager.is_running():
                        raise RuntimeError("transformers' continuous batching thread died")
                    continue
                if result.is_finished() and result.request_id in ids:
                    ids.pop(result.request_id)
                    generated += len(result.generated_tokens)
            return generated

        run([p[:32] for p in prompts[:4]], [8] * 4)  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        generated = run(prompts, outputs)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    finally:
        manager.stop(block=True)
    return _result(sum(outputs), seconds, num_seqs=len(prompts), generated_tokens=generated)


def _run_one(args: argparse.Namespace) -> None:
    prompts, outputs = workload(args.num_seqs)
    if args.system.startswith("hf_"):
        prompts, outputs = prompts[: args.hf_num_seqs], outputs[: args.hf_num_seqs]
    runners = {
        "pagoda": lambda: run_pagoda(args.model_dir, prompts, outputs, profiled_steps=args.profile_steps),
        "pagoda_async": lambda: run_pagoda(args.model_dir, prompts, outputs, async_scheduling=True,
                                           profiled_steps=args.profile_steps),
        "pagoda_lora": lambda: run_pagoda(args.model_dir, prompts, outputs, adapters=LORA_ADAPTERS,
                                          profiled_steps=args.profile_steps),
        "hf_generate": lambda: run_hf_generate(args.model_dir, prompts, outputs, args.hf_batch_size),
        "hf_generate_batch": lambda: run_hf_generate_batch(args.model_dir, prompts, outputs),
    }
    pathlib.Path(args.out).write_text(json.dumps(runners[args.system]()))


def _spawn(system: str, model_dir: pathlib.Path, out: pathlib.Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.gpu_throughput", "--system", system, "--model-dir", str(model_dir),
           "--out", str(out), "--num-seqs", str(args.num_seqs), "--hf-num-seqs", str(args.hf_num_seqs),
           "--hf-batch-size", str(args.hf_batch_size), "--profile-steps", str(args.profile_steps)]
    proc = subprocess.run(cmd, cwd=pathlib.Path(__file__).resolve().parents[1])
    if proc.returncode != 0 or not out.exists():
        return {"error": f"exit status {proc.returncode}"}
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=list(MODEL_SHAPES))
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--num-seqs", type=int, default=256)
    parser.add_argument("--hf-num-seqs", type=int, default=64)
    parser.add_argument("--hf-batch-size", type=int, default=64)
    parser.add_argument("--profile-steps", type=int, default=20,
                        help="pagoda steps profiled at full batch after the timed run (0: none)")
    # Internal: run one system in this process and write its result to --out.
    parser.add_argument("--system", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.system:
        _run_one(args)
        return
    for name in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = build_model_dir(name, pathlib.Path(tmp) / "model")
            systems = {s: _spawn(s, model_dir, pathlib.Path(tmp) / f"{s}.json", args) for s in args.systems}
        pagoda = systems.get("pagoda", {}).get("output_tokens_per_s")
        print(f"== {name}")
        for system, result in systems.items():
            rate = result.get("output_tokens_per_s")
            if pagoda and rate:
                result["pagoda_speedup"] = pagoda / rate
            print(f"{system:18s} " + (f"{rate:9.0f} tok/s  pagoda is {pagoda / rate:.2f}x" if rate and pagoda else str(result)))
            if result.get("steps"):
                print(" " * 19 + ", ".join(f"{phase} {1e3 * s / result['steps']:.2f}"
                                           for phase, s in result["step_phases_s"].items()) + " ms per step")
            if result.get("profile"):
                print(f"{'':19s}at batch {result['profile']['batch']}, " + format_profile(result["profile"]))
        record(f"gpu_throughput_{name}", {
            "device_facts": device_facts(),
            "workload": {"name": "nano-vllm", "num_seqs": args.num_seqs, "hf_num_seqs": args.hf_num_seqs,
                         "prompt_len": [100, 1024], "output_len": [100, 1024], "ignore_eos": True,
                         "temperature": TEMPERATURE, "prompts": "random tokens"},
            "model": describe(name),
            "systems": systems,
            "targets": {"hf_generate": ">= 24x", "hf_generate_batch": ">= 3x"},
            "lora": {"adapters": LORA_ADAPTERS, "rank": LORA_RANK, "targets": "every attention and MLP projection"},
        })


if __name__ == "__main__":
    main()
