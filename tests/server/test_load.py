"""Concurrency, disconnects and metrics: the server under load gives every KV block back."""

from __future__ import annotations

import asyncio
import http.client
import json
import time

import pytest

from pagoda.engine.metrics import METRIC_NAMES
from tests.server.conftest import API_KEY, MODEL_NAME, RunningServer

openai = pytest.importorskip("openai")

LONG = {"model": MODEL_NAME, "prompt": "Once upon a time", "max_tokens": 200, "ignore_eos": True}


def test_64_concurrent_streaming_clients(idle_server: RunningServer) -> None:
    server = idle_server
    before = server.metric("pagoda_requests_total", finish_reason="length")

    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[str, int]:
        stream = await client.completions.create(
            model=MODEL_NAME, prompt=f"Client {i} says hello", max_tokens=16, temperature=0.7, seed=i, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )
        text, usage = "", None
        async for chunk in stream:
            text += "".join(c.text for c in chunk.choices)
            usage = chunk.usage or usage
        return text, usage.completion_tokens

    async def main() -> list[tuple[str, int]]:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
        try:
            return await asyncio.gather(*(one(client, i) for i in range(64)))
        finally:
            await client.close()

    results = asyncio.run(main())
    assert [tokens for _, tokens in results] == [16] * 64
    server.wait_idle()
    engine = server.state.engine.engine
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_usable
    assert server.metric("pagoda_requests_running") == 0
    assert server.metric("pagoda_requests_waiting") == 0
    assert server.metric("pagoda_kv_cache_usage_ratio") == 0
    assert server.metric("pagoda_requests_total", finish_reason="length") == before + 64


def _start(server: RunningServer, body: dict) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    conn.request("POST", "/v1/completions", json.dumps(body), headers)
    return conn


def _wait_generating(server: RunningServer) -> None:
    deadline = time.monotonic() + 10
    while not any(seq.output_token_ids for seq in list(server.state.engine.engine.scheduler.running)):
        assert time.monotonic() < deadline, "nothing started generating"
        time.sleep(0.005)


def test_client_dropped_mid_stream_frees_its_blocks(idle_server: RunningServer) -> None:
    server = idle_server
    aborted = server.metric("pagoda_requests_total", finish_reason="abort")
    conn = _start(server, {**LONG, "stream": True})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.readline().startswith(b"data: ")  # it is streaming
    assert server.state.engine.engine.block_manager.usage > 0
    conn.sock.close()  # drop the connection mid-stream
    conn.close()
    server.wait_idle(timeout=5)
    # Aborted, not run to its end.
    assert server.metric("pagoda_requests_total", finish_reason="abort") == aborted + 1
    assert server.metric("pagoda_kv_cache_usage_ratio") == 0


def test_client_dropped_while_waiting_for_a_full_response(idle_server: RunningServer) -> None:
    server = idle_server
    aborted = server.metric("pagoda_requests_total", finish_reason="abort")
    conn = _start(server, {**LONG, "n": 2})
    _wait_generating(server)
    conn.sock.close()
    conn.close()
    server.wait_idle(timeout=5)
    assert server.metric("pagoda_requests_total", finish_reason="abort") == aborted + 1


def test_metrics_exposition(idle_server: RunningServer) -> None:
    server = idle_server
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)
    shared = "The quick brown fox jumps over the lazy dog. " * 4  # several full blocks
    for _ in range(2):
        client.completions.create(model=MODEL_NAME, prompt=shared, max_tokens=3, extra_body={"ignore_eos": True})
    text = server.request("GET", "/metrics", auth=False).body.decode()
    samples = [line for line in text.splitlines() if line.startswith("pagoda_")]
    names = {line.split("{", 1)[0] for line in samples}
    # Exactly the documented names, plus the series suffixes Prometheus adds to them.
    suffixes = ("", "_bucket", "_sum", "_count", "_created")
    allowed = {name.removesuffix("_total") + s for name in METRIC_NAMES for s in (*suffixes, "_total")}
    assert names <= allowed
    assert all(name in names or name + "_count" in names for name in METRIC_NAMES)
    assert all(f'model_name="{MODEL_NAME}"' in line for line in samples)
    assert server.metric("pagoda_prefix_cache_hits_total") > 0
    assert server.metric("pagoda_prefix_cache_queries_total") >= server.metric("pagoda_prefix_cache_hits_total")
    assert server.metric("pagoda_prompt_tokens_total") > 0 and server.metric("pagoda_generation_tokens_total") > 0
    for histogram in ("time_to_first_token", "inter_token_latency", "e2e_request_latency", "request_queue_time"):
        assert server.metric(f"pagoda_{histogram}_seconds_count") > 0
