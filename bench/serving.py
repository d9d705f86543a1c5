"""Serving benchmark: TTFT, inter-token latency and throughput of `pagoda serve` under load.

Starts `pagoda serve` in its own process (or targets --url), then sweeps
closed-loop concurrency (N clients, each sending its next request when the
last one ends) and open-loop request rates (Poisson arrivals), streaming
completions of random-token prompts with ignore_eos so every request makes
exactly --output-len tokens. Per run: TTFT, TPOT ((e2e - TTFT) / (tokens - 1)),
inter-token latency (gaps between streamed chunks), e2e latency percentiles,
and request and token throughput. The client is a bare HTTP streamer (httpx2,
which the openai package ships with), so it costs the shared CPU little.

    python -m bench.serving [--model DIR] [--concurrency 1,4,16,64] [--request-rate 1,4,16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import httpx2

from bench.common import write_result
from pagoda.processes import start_pagoda

# The model of bench/cpu_throughput.py: small enough for CPU, big enough that the forward pass dominates.
MODEL_SHAPE = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                   num_key_value_heads=4)
MODEL_NAME = "bench"


@dataclass
class RequestResult:
    ok: bool
    start: float
    ttft: float = 0.0
    e2e: float = 0.0
    output_tokens: int = 0
    chunk_gaps: list[float] = field(default_factory=list)


async def one_request(client: httpx2.AsyncClient, url: str, prompt: list[int], output_len: int) -> RequestResult:
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": output_len, "ignore_eos": True, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    result = RequestResult(ok=False, start=start)
    last = None
    async with client.stream("POST", url + "/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            await resp.aread()
            return result
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            now = time.perf_counter()
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                result.output_tokens = chunk["usage"]["completion_tokens"]
            if not chunk["choices"]:
                continue
            if last is None:
                result.ttft = now - start
            else:
                result.chunk_gaps.append(now - last)
            last = now
    result.e2e = time.perf_counter() - start
    result.ok = result.output_tokens == output_len
    return result


def percentiles(values: list[float], scale: float = 1000.0) -> dict[str, float]:
    """Mean and percentiles, in milliseconds by default."""
    if not values:
        return {}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)] * scale

    return {"mean": round(sum(ordered) / len(ordered) * scale, 3), "p50": round(pick(0.5), 3),
            "p90": round(pick(0.9), 3), "p99": round(pick(0.99), 3)}


def summarize(results: list[RequestResult], duration: float, input_len: int) -> dict[str, Any]:
    done = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in done)
    return {
        "completed": len(done), "failed": len(results) - len(done), "duration_s": round(duration, 3),
        "request_throughput_per_s": round(len(done) / duration, 3),
        "output_tokens_per_s": round(out_tokens / duration, 1),
        "total_tokens_per_s": round((out_tokens + input_len * len(done)) / duration, 1),
        "ttft_ms": percentiles([r.ttft for r in done]),
        "tpot_ms": percentiles([(r.e2e - r.ttft) / (r.output_tokens - 1) for r in done if r.output_tokens > 1]),
        "itl_ms": percentiles([gap for r in done for gap in r.chunk_gaps]),
        "e2e_ms": percentiles([r.e2e for r in done]),
    }


async def run_closed_loop(url: str, prompts: list[list[int]], output_len: int, concurrency: int) -> list[RequestResult]:
    queue = list(reversed(prompts))
    results: list[RequestResult] = []

    async def worker(client: httpx2.AsyncClient) -> None:
        while queue:
            results.append(await one_request(client, url, queue.pop(), output_len))

    async with httpx2.AsyncClient(timeout=600, limits=httpx2.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return results


async def run_open_loop(url: str, prompts: list[list[int]], output_len: int, rate: float,
                        seed: int) -> list[RequestResult]:
    rng = random.Random(seed)
    async with httpx2.AsyncClient(timeout=600, limits=httpx2.Limits(max_connections=None)) as client:
        tasks = []
        for prompt in prompts:
            tasks.append(asyncio.create_task(one_request(client, url, prompt, output_len)))
            await asyncio.sleep(rng.expovariate(rate))
        return list(await asyncio.gather(*tasks))


def start_server(model: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    return start_pagoda(["serve", model, "--served-model-name", MODEL_NAME, "--log-level", "warning", *extra],
                        timeout=600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: a random-weight model of MODEL_SHAPE)")
    parser.add_argument("--url", help="benchmark a running server instead of starting one")
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--request-rate", default="2,8,32", help="requests/s of the open-loop runs ('' for none)")
    parser.add_argument("--num-prompts", type=int, default=64, help="requests per run")
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--server-args", default="", help="extra `pagoda serve` flags, space separated")
    parser.add_argument("--name", default=None, help="result file name (default: serving_cpu or serving_gpu)")
    args = parser.parse_args()

    rng = random.Random(0)
    prompts = [[rng.randrange(5, 400) for _ in range(args.input_len)] for _ in range(args.num_prompts)]
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None and args.url is None:
            from pagoda.engine.fixtures import make_tiny_model

            model = str(make_tiny_model(tmp, "llama", **MODEL_SHAPE))
        proc, url = (None, args.url) if args.url else start_server(model, args.server_args.split())
        try:
            asyncio.run(run_closed_loop(url, prompts[:4], args.output_len, 4))  # warm-up
            runs = []
            for concurrency in [int(c) for c in args.concurrency.split(",") if c]:
                start = time.perf_counter()
                results = asyncio.run(run_closed_loop(url, prompts, args.output_len, concurrency))
                runs.append({"mode": "concurrency", "concurrency": concurrency,
                             **summarize(results, time.perf_counter() - start, args.input_len)})
                _print(runs[-1])
            for rate in [float(r) for r in args.request_rate.split(",") if r]:
                start = time.perf_counter()
                results = asyncio.run(run_open_loop(url, prompts, args.output_len, rate, seed=1))
                runs.append({"mode": "request_rate", "request_rate": rate,
                             **summarize(results, time.perf_counter() - start, args.input_len)})
                _print(runs[-1])
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=120)

    import torch

    name = args.name or ("serving_gpu" if torch.cuda.is_available() else "serving_cpu")
    path = write_result(name, {
        "workload": {"num_prompts": args.num_prompts, "input_len": args.input_len, "output_len": args.output_len,
                     "prompts": "random tokens", "ignore_eos": True, "temperature": 0, "stream": True},
        "model": {"path": args.model or args.url, "shape": None if args.model or args.url else MODEL_SHAPE},
        "server_args": args.server_args, "cpu_count": os.cpu_count(), "runs": runs,
    })
    print(f"wrote {path}")


def _print(run: dict[str, Any]) -> None:
    label = f"c={run['concurrency']}" if run["mode"] == "concurrency" else f"rate={run['request_rate']}/s"
    print(f"{label:>12}  {run['completed']} ok {run['failed']} failed  {run['output_tokens_per_s']:8.1f} out tok/s  "
          f"TTFT p50 {run['ttft_ms'].get('p50', 0):8.1f} p99 {run['ttft_ms'].get('p99', 0):8.1f} ms  "
          f"ITL p50 {run['itl_ms'].get('p50', 0):6.1f} p99 {run['itl_ms'].get('p99', 0):6.1f} ms  "
          f"TPOT mean {run['tpot_ms'].get('mean', 0):6.1f} ms", flush=True)


if __name__ == "__main__":
    main()
