"""pagoda.kernels.ops: the references for CPU tensors, without ever importing Triton there."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from pagoda.kernels import ops, reference


def test_cpu_tensors_run_the_reference_and_never_load_triton() -> None:
    """In a fresh process: CPU-only deployments (and the operator image) must not pay for Triton."""
    script = textwrap.dedent("""
        import sys, torch
        from pagoda.kernels import ops, reference
        x, w = torch.randn(3, 16), torch.rand(16)
        assert torch.equal(ops.rms_norm(x, w, 1e-6), reference.rms_norm(x, w, 1e-6))
        assert torch.equal(ops.silu_and_mul(x), reference.silu_and_mul(x))
        assert "triton" not in sys.modules, "ops imported Triton for CPU tensors"
    """)
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_entry_points_keep_the_reference_signatures() -> None:
    for name in ("rms_norm", "fused_add_rms_norm", "rotary_embedding", "rotate_and_store_kv", "silu_and_mul",
                 "store_kv_cache", "paged_attention_decode", "paged_attention_prefill"):
        op = getattr(ops, name)
        assert op.__wrapped__ is getattr(reference, name) and op.__doc__ == getattr(reference, name).__doc__
    x = torch.randn(2, 8)
    assert torch.equal(ops.fused_add_rms_norm(x, x, torch.ones(8), 1e-5)[1], 2 * x)
