"""Runs the Triton kernels natively on a GPU, or interpreted on the CPU (TRITON_INTERPRET=1).

Triton fixes a function's mode when it is decorated, its own library's
included, so the variable is set while Triton and `pagoda.kernels.triton`
are first imported, here, and then put back: other test modules never see
it. During these tests it is set again (some interpreter paths read it at
run time). Nothing else imports Triton on a CPU machine (`pagoda.kernels.ops`
imports the kernels on the first CUDA call only), which the check below
makes sure of.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest
import torch

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")

if not ON_GPU:
    if "triton" in sys.modules and not os.environ.get("TRITON_INTERPRET"):
        # Triton's own library functions (tl.cdiv, tl.sum, ...) were then decorated for
        # compilation, and interpreted kernels cannot call them.
        raise RuntimeError("triton was imported before tests/kernels could select its interpreter; import it later")
    _saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import pagoda.kernels.triton  # noqa: F401  (decorates the kernels as interpreted)
    finally:
        if _saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _saved


@pytest.fixture(autouse=True)
def _triton_mode(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if not ON_GPU:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield


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
