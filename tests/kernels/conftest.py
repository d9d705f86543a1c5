"""Runs the Triton kernels natively on a GPU, or interpreted on the CPU (TRITON_INTERPRET=1).

Triton fixes a function's mode when it is decorated, its own library's
included, and torch._dynamo may import Triton long before these tests do;
so without a GPU tests/conftest.py sets the variable for the whole session,
before any test module is imported. This module only makes sure of it.
"""

from __future__ import annotations

import os

import pytest
import torch

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")

if not ON_GPU and os.environ.get("TRITON_INTERPRET") != "1":
    raise RuntimeError("without a GPU the kernel tests need TRITON_INTERPRET=1 from before Triton's first import")


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every floating tensor the kernels allocate with torch.empty(_like) starts as NaN.

    An output element (or split-K partial) that a kernel forgets to write
    then shows up as NaN instead of whatever the allocator happened to hold.
    """
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t: torch.Tensor) -> torch.Tensor:
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poison(empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poison(empty_like(*a, **kw)))


@pytest.fixture
def triton_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine on the Triton kernels on a CPU: the ops only dispatch CUDA tensors to Triton, so route them there
    by hand, and select the Triton attention backend."""
    import pagoda.kernels.triton as kernels
    from pagoda.engine import model_runner
    from pagoda.engine.attention.triton_backend import TritonAttentionBackend
    from pagoda.kernels import ops

    for name in ("rms_norm", "fused_add_rms_norm", "fused_linear", "rotary_embedding", "rotate_and_store_kv", "silu_and_mul",
                 "store_kv_cache", "fused_moe", "fp8_block_linear", "int_linear", "gelu_tanh_and_mul",
                 "gated_delta_decode_slots", "ssd_decode_slots"):
        monkeypatch.setattr(ops, name, getattr(kernels, name))
    monkeypatch.setattr(model_runner, "select_backend", lambda device: TritonAttentionBackend())
