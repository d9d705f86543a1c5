"""Shared fixtures: small random-weight model directories, built once per session."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from typing import Any

import pytest
import torch

# Without a GPU, Triton kernels can only run interpreted, and Triton fixes the mode
# when a function is decorated: possibly at the first `import triton`, which
# torch._dynamo performs on its own (transformers reaches it). So the variable is set
# for the whole session, before any test module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """On a GPU machine, a test parametrized with more tensor-parallel ranks (`tp`) than it has GPUs is
    skipped (each rank takes its own GPU; on the CPU ranks share the cores)."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else None
    for item in items:
        tp = getattr(getattr(item, "callspec", None), "params", {}).get("tp")
        if gpus is not None and isinstance(tp, int) and tp > gpus:
            item.add_marker(pytest.mark.skip(reason=f"tp={tp} needs {tp} GPUs, this machine has {gpus}"))


@pytest.fixture(autouse=True)
def _bounded_gpu_kv_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA, an LLM built without a KV budget gets the CPU default instead of profiling 90 % of the GPU (a
    tiny model would otherwise get millions of blocks, and GPU tests run side by side in several workers), and
    without max_num_seqs 32 instead of 256: 7 decode graphs to capture per engine instead of 35."""
    if not torch.cuda.is_available():
        return
    import dataclasses

    from pagoda.engine import llm
    from pagoda.engine.config import DEFAULT_CPU_KV_CACHE_BYTES, EngineConfig

    @dataclasses.dataclass
    class BoundedConfig(EngineConfig):
        kv_cache_memory_bytes: int | None = DEFAULT_CPU_KV_CACHE_BYTES
        max_num_seqs: int = 32

    monkeypatch.setattr(llm, "EngineConfig", BoundedConfig)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., pathlib.Path]:
    """tiny_model(arch, **make_tiny_model kwargs) -> model directory, cached per argument set."""
    from pagoda.engine.fixtures import make_tiny_model

    cache: dict[tuple[Any, ...], pathlib.Path] = {}

    def make(arch: str = "llama", **kwargs: Any) -> pathlib.Path:
        key = (arch, repr(sorted(kwargs.items())))  # repr: values may be dicts (rope_parameters)
        if key not in cache:
            cache[key] = make_tiny_model(tmp_path_factory.mktemp(f"model-{arch}"), arch, **kwargs)
        return cache[key]

    return make
