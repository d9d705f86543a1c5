"""Gateway routing benchmark: prefix-aware routing against what a Service does.

Starts --replicas engines (`pagoda serve`, one CPU thread each, as replicas
on their own machines would not share cores) and, per strategy, `pagoda
gateway --routing STRATEGY` in front of them. The workload is document
question answering: --documents documents of --document-len tokens, each
asked --questions questions (a different tail of --question-len tokens), the
requests in random order from --concurrency closed-loop clients. Every
request after a document's first can reuse that document's KV blocks, but
only on a replica that already prefilled it. `round-robin` stands in for a
Kubernetes Service (kube-proxy picks endpoints at random), `least-load`
balances without looking at prompts, `prefix-hash` is the gateway's default,
run again with a looser load bound to show what the bound costs in locality.
Each strategy gets documents of its own, so no strategy warms another's caches.

Reported per strategy: the prompt tokens served from the replicas' prefix
caches (the engines' own pagoda_prefix_cache_{hits,queries}_total), request
throughput, TTFT and end-to-end latency; and the ratios of prefix-hash to
round-robin.

    python -m bench.gateway_routing [--replicas 4] [--documents 16] [--questions 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

import httpx2

from bench.common import write_result
from pagoda.operator.gateway.balancer import DEFAULT_LOAD_FACTOR
from bench.serving import MODEL_NAME, MODEL_SHAPE, one_request, start_server, summarize
from pagoda.processes import start_pagoda

STRATEGIES = ("round-robin", "least-load", "prefix-hash")
#: prefix-hash also runs with a looser load bound: what locality the bound trades for balance.
LOOSE_LOAD_FACTOR = 2.0


def engine_counters(urls: list[str]) -> dict[str, float]:
    """Prefix-cache queries and hits summed over the replicas (tokens)."""
    totals = {"pagoda_prefix_cache_queries_total": 0.0, "pagoda_prefix_cache_hits_total": 0.0}
    for url in urls:
        for line in urllib.request.urlopen(url + "/metrics", timeout=10).read().decode().splitlines():
            name = line.split("{", 1)[0]
            if name in totals:
                totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


def start_gateway(strategy: str, load_factor: float, engines: list[str]) -> tuple[subprocess.Popen, str]:
    backends = [arg for url in engines for arg in ("--backend", f"{MODEL_NAME}={url}")]
    return start_pagoda(["gateway", "--routing", strategy, "--load-factor", str(load_factor), "--log-level",
                         "warning", *backends], timeout=60)


def workload(args: argparse.Namespace, seed: int) -> list[list[int]]:
    """Every (document, question) prompt as token ids, in random order."""
    rng = random.Random(seed)
    documents = [[rng.randrange(5, 400) for _ in range(args.document_len)] for _ in range(args.documents)]
    prompts = [doc + [rng.randrange(5, 400) for _ in range(args.question_len)]
               for doc in documents for _ in range(args.questions)]
    rng.shuffle(prompts)
    return prompts


async def closed_loop(url: str, prompts: list[list[int]], output_len: int, concurrency: int) -> list[Any]:
    queue = list(prompts)
    results = []

    async def worker(client: httpx2.AsyncClient) -> None:
        while queue:
            results.append(await one_request(client, url, queue.pop(0), output_len))

    async with httpx2.AsyncClient(timeout=600, limits=httpx2.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--documents", type=int, default=16)
    parser.add_argument("--document-len", type=int, default=1024)
    parser.add_argument("--questions", type=int, default=8, help="questions per document")
    parser.add_argument("--question-len", type=int, default=16)
    parser.add_argument("--output-len", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    os.environ["OMP_NUM_THREADS"] = "1"  # the engines' torch threads: one core per replica
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        from pagoda.engine.fixtures import make_tiny_model

        model = str(make_tiny_model(tmp, "llama", **MODEL_SHAPE))
        engines = [start_server(model, []) for _ in range(args.replicas)]
        urls = [url for _, url in engines]
        try:
            variants = [(s, DEFAULT_LOAD_FACTOR, s) for s in STRATEGIES]
            variants.append(("prefix-hash", LOOSE_LOAD_FACTOR, f"prefix-hash, load factor {LOOSE_LOAD_FACTOR}"))
            for number, (strategy, load_factor, label) in enumerate(variants):
                gateway, gateway_url = start_gateway(strategy, load_factor, urls)
                try:
                    prompts = workload(args, seed=number)
                    before = engine_counters(urls)
                    start = time.perf_counter()
                    results = asyncio.run(closed_loop(gateway_url, prompts, args.output_len, args.concurrency))
                    duration = time.perf_counter() - start
                    after = engine_counters(urls)
                finally:
                    gateway.send_signal(signal.SIGTERM)
                    gateway.wait(30)
                queries = after["pagoda_prefix_cache_queries_total"] - before["pagoda_prefix_cache_queries_total"]
                hits = after["pagoda_prefix_cache_hits_total"] - before["pagoda_prefix_cache_hits_total"]
                summary = summarize(results, duration, args.document_len + args.question_len)
                runs[label] = {"prefix_cache_hit_rate": round(hits / queries, 4) if queries else 0.0,
                                  "prefix_cache_hit_tokens": int(hits), "prompt_tokens": int(queries),
                                  **{k: summary[k] for k in ("completed", "failed", "duration_s",
                                                             "request_throughput_per_s", "ttft_ms", "e2e_ms")}}
                print(f"{label:>30}: {runs[label]['prefix_cache_hit_rate']:.1%} of prompt tokens cached, "
                      f"{summary['request_throughput_per_s']:.2f} req/s, TTFT p50 {summary['ttft_ms']['p50']:.0f} ms "
                      f"p90 {summary['ttft_ms']['p90']:.0f} ms", flush=True)
        finally:
            for proc, _ in engines:
                proc.send_signal(signal.SIGTERM)
            for proc, _ in engines:
                proc.wait(120)

    best, baseline = runs["prefix-hash"], runs["round-robin"]
    ratios = {"throughput": round(best["request_throughput_per_s"] / baseline["request_throughput_per_s"], 3),
              "ttft_p50": round(best["ttft_ms"]["p50"] / baseline["ttft_ms"]["p50"], 3),
              "e2e_mean": round(best["e2e_ms"]["mean"] / baseline["e2e_ms"]["mean"], 3)}
    print(f"prefix-hash vs round-robin: {ratios['throughput']}x throughput, TTFT p50 x{ratios['ttft_p50']}")
    path = write_result("gateway_routing_cpu", {
        "workload": {k: getattr(args, k) for k in ("replicas", "documents", "document_len", "questions",
                                                   "question_len", "output_len", "concurrency")}
                    | {"order": "random", "prompts": "random tokens", "engine_threads": 1},
        "model": {"shape": MODEL_SHAPE}, "strategies": runs, "prefix_hash_over_round_robin": ratios,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
