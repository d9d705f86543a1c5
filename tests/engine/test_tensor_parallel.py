"""Tensor parallelism on CPU: gloo worker processes give the same greedy output as one process."""

from __future__ import annotations

import multiprocessing

import os
import signal
import time

import pytest

from pagoda.engine.distributed import tp_size
from pagoda.engine.fixtures import FIXTURE_ARCHS
from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import SamplingParams
from pagoda.engine.tensor_parallel import WorkerDiedError
from tests.engine.hf_reference import hf_greedy

PROMPTS = ["Hello, my name is", "The quick brown fox jumps over the lazy dog. Once upon a time", "東京 🚀"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)


def _param_bytes(llm: LLM) -> int:
    return sum(p.numel() * p.element_size() for p in llm.engine.runner.model.parameters())


@pytest.mark.parametrize(("arch", "tp"), [(arch, 2) for arch in FIXTURE_ARCHS] + [("llama", 4)])
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
