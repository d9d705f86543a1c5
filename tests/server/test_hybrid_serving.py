"""A hybrid model (Qwen3.5: Gated DeltaNet and attention) behind the real server: the openai client's
streamed and whole answers agree with transformers, and a client that disconnects mid-stream gives
back its state slot with its KV blocks."""

from __future__ import annotations

import http.client
import json
import time

import openai
import pytest

from tests.engine.hf_reference import hf_greedy
from tests.server.conftest import MODEL_NAME, serve_in_thread


@pytest.fixture(scope="module")
def hybrid(tiny_model):
    path = tiny_model("qwen3_5")
    with serve_in_thread([str(path), "--served-model-name", MODEL_NAME, "--dtype", "float32",
                          "--max-num-seqs", "2", "--max-num-batched-tokens", "8", "--block-size", "4"]) as server:
        yield path, server


def test_streamed_and_whole_completions_match_transformers(hybrid) -> None:
    path, server = hybrid
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    prompt = "The quick brown fox jumps over the lazy dog. Hello"
    whole = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=10, temperature=0.0,
                                      extra_body={"ignore_eos": True, "return_token_ids": True})
    ids = whole.choices[0].token_ids
    assert ids == hf_greedy(path, whole.choices[0].prompt_token_ids, 10)
    stream = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=10, temperature=0.0, stream=True,
                                       extra_body={"ignore_eos": True})
    assert "".join(chunk.choices[0].text for chunk in stream) == whole.choices[0].text
    server.wait_idle()


def test_a_disconnected_stream_frees_its_state_slot(hybrid) -> None:
    _, server = hybrid
    manager = server.state.engine.engine.block_manager
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    body = {"model": MODEL_NAME, "prompt": "Once upon a time", "max_tokens": 200, "ignore_eos": True, "stream": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    response.readline()  # the first event: the request is running and holds a slot
    assert len(manager.states.free_slots) == 1
    conn.close()
    server.wait_idle()
    deadline = time.monotonic() + 10
    while len(manager.states.free_slots) != 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(manager.states.free_slots) == [0, 1]
