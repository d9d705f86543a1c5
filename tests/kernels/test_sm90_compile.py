"""Every kernel compiles for Hopper down to a cubin within its shared memory, and the 16-bit ones do so
without register spills.

See tests/kernels/sm90.py. It runs in a subprocess because this test
process holds the interpreted kernels. On a GPU the native tests compile the
same kernels for the device at hand, so this is a CPU-only check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernels.conftest import ON_GPU

ROOT = Path(__file__).resolve().parents[2]
SM90_MAX_SHARED_BYTES = 227 * 1024


@pytest.mark.skipif(ON_GPU, reason="the native kernel tests compile for the GPU at hand")
def test_kernels_compile_for_sm90_without_spills() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "tests.kernels.sm90"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)
    kernels = {r["kernel"] for r in report.values()}
    assert kernels >= {"_decode_kernel", "_merge_kernel", "_prefill_kernel", "_store_kv_kernel", "_rotary_kernel",
                       "_rms_norm_kernel", "_act_and_mul_kernel", "_moe_gemm_kernel", "_fp8_linear_kernel",
                       "_int_linear_kernel"}
    # fp32 runs its dots on FMA units with operands in registers; it is a test-fixture path, not a serving one.
    spilling = {label: r for label, r in report.items() if r["spill_bytes"] and "float32" not in label}
    assert not spilling, spilling
    # A block of an H100 offers at most 227 KiB of shared memory; a kernel asking more fails to launch.
    oversized = {label: r for label, r in report.items() if r["shared_bytes"] > SM90_MAX_SHARED_BYTES}
    assert not oversized, oversized
