"""Tensor parallelism on CPU: gloo worker processes give the same greedy output as one process."""

from __future__ import annotations

import multiprocessing

import os
import signal
import subprocess
import sys
import time

import pytest

from pagoda.engine.distributed import tp_size
from pagoda.engine.fixtures import FIXTURE_ARCHS
from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import SamplingParams
from pagoda.engine.tensor_parallel import WorkerDiedError
from tests.engine.hf_reference import hf_greedy
from tests.server.conftest import free_port

PROMPTS = ["Hello, my name is", "The quick brown fox jumps over the lazy dog. Once upon a time", "東京 🚀"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)


def _param_bytes(llm: LLM) -> int:
    return sum(p.numel() * p.element_size() for p in llm.engine.runner.model.parameters())


# Families whose parity runs in the default suite; the others' (same code paths, other layers) under `slow`.
CORE_ARCHS = ("llama", "qwen3_moe", "deepseek_v3", "gemma3", "gpt_oss")


@pytest.mark.parametrize(("arch", "tp"), [pytest.param(arch, 2, marks=() if arch in CORE_ARCHS else pytest.mark.slow)
                                          for arch in FIXTURE_ARCHS] + [("llama", 4)])
def test_tensor_parallel_matches_transformers(tiny_model, arch: str, tp: int) -> None:
    # tp=4 with 2 KV heads: each KV head is replicated on two ranks.
    path = tiny_model(arch, tie_word_embeddings=arch == "qwen3")
    llm = LLM(str(path), dtype="float32", tensor_parallel_size=tp, block_size=4, max_num_batched_tokens=16)
    try:
        outs = llm.generate(PROMPTS, GREEDY)
        shard_bytes = _param_bytes(llm)
    finally:
        llm.engine.shutdown()
    for out in outs:
        assert out.outputs[0].token_ids == hf_greedy(path, out.prompt_token_ids, 10), out.prompt
    whole = LLM(str(path), dtype="float32")
    # Norms are replicated, everything else is split: a rank holds about 1/tp of the weights.
    assert shard_bytes / _param_bytes(whole) < 1.0 / tp + 0.05


def test_a_dead_worker_fails_the_engine_instead_of_hanging(tiny_model) -> None:
    llm = LLM(str(tiny_model("llama")), dtype="float32", tensor_parallel_size=2)
    try:
        worker = llm.engine.tp_group.workers[0]
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(timeout=10)
        deadline = time.monotonic() + 10
        while llm.engine.tp_group.failure is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(WorkerDiedError, match="exited"):
            llm.engine.check_health()
        with pytest.raises(WorkerDiedError):
            llm.generate(PROMPTS[0], GREEDY)
    finally:
        llm.engine.shutdown()


def test_a_failed_start_leaves_no_workers_and_no_group(tiny_model) -> None:
    """An engine that fails after its workers started (here: a KV cache too small for the context)
    stops them and clears the process's tensor-parallel state, so the next engine works."""
    path = str(tiny_model("llama"))
    with pytest.raises(ValueError, match="KV cache holds"):
        LLM(path, dtype="float32", tensor_parallel_size=2, num_kv_blocks=1, block_size=4)
    assert tp_size() == 1
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("pagoda-tp")]
    out = LLM(path, dtype="float32").generate(PROMPTS[:1], GREEDY)[0]
    assert out.outputs[0].token_ids == hf_greedy(tiny_model("llama"), out.prompt_token_ids, 10)


def _headless_node(path: str, port: int, node_rank: int, tp: int, nnodes: int) -> subprocess.Popen:
    """`pagoda serve --headless`: another machine's ranks, here another process meeting on loopback."""
    return subprocess.Popen([sys.executable, "-m", "pagoda.cli", "serve", path, "--dtype", "float32",
                             "--tensor-parallel-size", str(tp), "--nnodes", str(nnodes), "--node-rank", str(node_rank),
                             "--master-addr", "127.0.0.1", "--master-port", str(port), "--headless"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.parametrize(("tp", "nnodes"), [(2, 2), pytest.param(4, 2, marks=pytest.mark.slow)])
def test_ranks_over_several_nodes_match_transformers(tiny_model, tp: int, nnodes: int) -> None:
    """Node 0 (this process, the engine) and headless nodes (processes started as `pagoda serve
    --headless`, as other pods would be) run one model; node 0 stopping ends them cleanly."""
    path = str(tiny_model("llama"))
    port = free_port()
    nodes = [_headless_node(path, port, rank, tp, nnodes) for rank in range(1, nnodes)]
    try:
        llm = LLM(path, dtype="float32", tensor_parallel_size=tp, nnodes=nnodes, node_rank=0, master_port=port,
                  block_size=4, max_num_batched_tokens=16)
        try:
            assert len(llm.engine.tp_group.workers) == tp // nnodes - 1  # only this node's ranks are children
            outs = llm.generate(PROMPTS, GREEDY)
        finally:
            llm.engine.shutdown()
        for out in outs:
            assert out.outputs[0].token_ids == hf_greedy(path, out.prompt_token_ids, 10), out.prompt
        for node in nodes:
            assert node.wait(timeout=60) == 0, node.stdout.read().decode()[-3000:]
    finally:
        for node in nodes:
            node.kill()


def test_a_lost_node_fails_the_engine_instead_of_hanging(tiny_model) -> None:
    path = str(tiny_model("llama"))
    port = free_port()
    node = _headless_node(path, port, 1, 2, 2)
    llm = LLM(path, dtype="float32", tensor_parallel_size=2, nnodes=2, master_port=port)
    try:
        assert llm.generate(PROMPTS[0], GREEDY)[0].outputs[0].token_ids
        node.kill()
        node.wait(timeout=10)
        with pytest.raises((WorkerDiedError, RuntimeError)):
            llm.generate(PROMPTS[0], GREEDY)
    finally:
        llm.engine.shutdown()
        node.kill()


@pytest.mark.parametrize(("options", "message"), [
    (dict(tensor_parallel_size=3, nnodes=2), "divide"),
    (dict(tensor_parallel_size=2, nnodes=2, node_rank=2), "node_rank"),
    (dict(tensor_parallel_size=2, nnodes=2, node_rank=1), "node 0"),
])
def test_bad_node_layouts_are_refused(tiny_model, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LLM(str(tiny_model("llama")), dtype="float32", **options)
