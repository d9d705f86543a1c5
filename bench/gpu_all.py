"""Every GPU check of the Triton fast path, in one command.

    python -m bench.gpu_all [PART ...] [--copy-to DIR]

Parts, in order (default: all):
  tests             tests/kernels natively on the GPU, then the engine's HF parity
                    tests (now on CUDA: Triton kernels and decode CUDA graphs end to end),
                    FP8 and GPTQ/AWQ/compressed-tensors checkpoints included, the sampler's CUDA
                    tests (the Triton temperature sampler) and async scheduling (events, pinned
                    copies, placeholders read on the device); each test's outcome is logged as it
                    ends (gpu_*.jsonl), so a run cut at the device's time limit still says what failed
  decode_attention  bench.gpu_decode_attention --sweep
  decode_step       bench.gpu_decode_step
  fused_linear      bench.gpu_fused_linear --sweep (the decode GEMM with its layer's norms, activation
                    and residual adds folded in, against cuBLAS, per projection)
  moe               bench.gpu_moe (the fused MoE kernel on Qwen3-30B-A3B and Mixtral layers)
  fp8               bench.gpu_weight_only fp8 and fp8_channel (the FP8 weight GEMM, block and
                    per-channel scales, against cuBLAS bf16)
  int4              bench.gpu_weight_only int4 and nf4 (the 4-bit GPTQ/AWQ weight GEMM, and with
                    bitsandbytes' NF4 codebook, against cuBLAS bf16)
  throughput        bench.gpu_throughput (both models; the longest part)

Each part runs in its own process, so one failing leaves the others' results;
each writes bench/results/gpu_*.json. --copy-to copies those files and the
test logs to DIR, e.g. $OUT on the device machine. About 15 minutes in all on
an H100; split the parts over several calls where a call is limited to 10.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PARTS = ("tests", "decode_attention", "decode_step", "fused_linear", "moe", "fp8", "int4", "throughput")
LOGS = pathlib.Path(tempfile.mkdtemp(prefix="pagoda-gpu-"))
_PYTEST = "import sys, bench.gpu_import, pytest; sys.exit(pytest.main(sys.argv[1:]))"


def _checkout_env() -> dict[str, str]:
    """The environment with a sitecustomize that maps the checkout under `pagoda` in every Python process the
    tests start (pytest-xdist workers, tensor-parallel ranks, the tests' own subprocesses), not only in ours."""
    site = LOGS / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(f"import sys\nsys.path.append({str(ROOT)!r})\nimport bench.gpu_import\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def _pytest(name: str, paths: list[str]) -> dict:
    """Runs pytest (with pagoda importable from the bare checkout) and summarises its junit report."""
    xml = LOGS / f"gpu_{name}.xml"
    log = LOGS / f"gpu_{name}.log"
    start = time.perf_counter()
    # Kernel compiles and the Hugging Face references are CPU work: spread them over worker processes.
    workers = ["-n", "8"] if importlib.util.find_spec("xdist") else []
    with log.open("w") as f:
        proc = subprocess.run([sys.executable, "-c", _PYTEST, "-q", "-p", "no:cacheprovider", "-p", "bench.gpu_test_log",
                               *workers, f"--junitxml={xml}", *paths],
                              cwd=ROOT, env={**_checkout_env(), "PAGODA_TEST_LOG": str(LOGS / f"gpu_{name}.jsonl")},
                              stdout=f, stderr=subprocess.STDOUT)
    suite = ET.parse(xml).getroot().find("testsuite") if xml.exists() else None
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")} if suite is not None else {}
    print(f"{name}: exit {proc.returncode}, {counts}, {time.perf_counter() - start:.0f}s; log in {log}")
    return {"paths": paths, "exit_status": proc.returncode, **counts, "seconds": time.perf_counter() - start}


def run_tests() -> None:
    import torch

    summary = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU",
        "kernel_tests": _pytest("kernel_tests", ["tests/kernels"]),
        "hf_parity_tests": _pytest("hf_parity_tests", ["tests/engine/test_hf_parity.py", "tests/engine/test_fp8.py",
                                                       "tests/engine/test_fp8_formats.py", "tests/engine/test_int_quant.py",
                                                       "tests/engine/test_bnb.py", "tests/engine/test_deepseek.py",
                                                       "tests/engine/test_image_prompts.py", "tests/engine/test_gpt_oss.py",
                                                       "tests/engine/test_encoders.py", "tests/engine/test_qwen_vl.py",
                                                       "tests/engine/test_gemma4.py", "tests/engine/test_hybrid.py",
                                                       "tests/engine/test_sampler.py",
                                                       "tests/engine/test_async_scheduling.py"]),
    }
    (RESULTS / "gpu_tests.json").write_text(json.dumps(summary, indent=2) + "\n")


def _module(name: str, *args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", name, *args], cwd=ROOT)
    if proc.returncode:
        print(f"{name} exited with status {proc.returncode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", metavar="PART", help=f"any of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--copy-to", type=pathlib.Path, help="also copy the results and test logs here")
    args = parser.parse_args()
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {PARTS}")
    RESULTS.mkdir(exist_ok=True)
    actions = {
        "tests": run_tests,
        "decode_attention": lambda: _module("bench.gpu_decode_attention", "--sweep"),
        "decode_step": lambda: _module("bench.gpu_decode_step"),
        "fused_linear": lambda: _module("bench.gpu_fused_linear", "--sweep"),
        "moe": lambda: _module("bench.gpu_moe"),
        "fp8": lambda: (_module("bench.gpu_weight_only", "fp8"), _module("bench.gpu_weight_only", "fp8_channel")),
        "int4": lambda: (_module("bench.gpu_weight_only", "int4"), _module("bench.gpu_weight_only", "nf4")),
        "throughput": lambda: _module("bench.gpu_throughput"),
    }
    for part in args.parts or PARTS:
        start = time.perf_counter()
        print(f"=== {part}", flush=True)
        actions[part]()
        print(f"=== {part} done in {time.perf_counter() - start:.0f}s", flush=True)
    if args.copy_to:
        args.copy_to.mkdir(parents=True, exist_ok=True)
        for path in [*sorted(RESULTS.glob("gpu_*.json")), *sorted(LOGS.glob("*.log")), *sorted(LOGS.glob("*.jsonl"))]:
            shutil.copy(path, args.copy_to / path.name)


if __name__ == "__main__":
    main()
