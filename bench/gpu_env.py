"""What every GPU benchmark shares: the copy-bandwidth ceiling, timing, versions and result files."""

from __future__ import annotations

import bench.gpu_import  # noqa: F401  (pagoda importable from a bare checkout; first)

import pathlib  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import triton  # noqa: E402

from bench.common import environment, write_result  # noqa: E402


def versions() -> dict[str, str]:
    return {**environment()["versions"], "triton": triton.__version__, "cuda": str(torch.version.cuda)}


def device_facts() -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "sms": props.multi_processor_count, "memory_gib": round(props.total_memory / 2**30, 1)}


# More than an H100's or H200's L2 (50 and 60 MB): zeroing it evicts whatever the previous run left there.
L2_FLUSH_BYTES = 256 << 20


def bench_ms(fn: Any) -> float:
    """Median milliseconds of fn, timed with CUDA events; do_bench clears L2 before every run."""
    return float(triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median"))


def _captured(body: Any) -> torch.cuda.CUDAGraph:
    """body's launches captured in a CUDA graph, after a warm-up run on a side stream (compiles, allocations)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    return graph


def graph_ms(fn: Any) -> float | None:
    """Median device milliseconds of fn: its launches replayed from a CUDA graph, as the engine's decode graphs
    run them, after an L2 flush in the same graph (whose own time is taken off). bench_ms times launches
    from Python: where fn is many small kernels, or one whose launch takes longer than its run, that is
    the host's launch time, not the GPU's. None where fn cannot be captured (it reads a result back)."""
    flush = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    try:
        both = _captured(lambda: (flush.zero_(), fn()))
        alone = _captured(flush.zero_)
    except RuntimeError as exc:
        print(f"graph_ms: not capturable ({exc})")
        return None
    return max(bench_ms(both.replay) - bench_ms(alone.replay), 0.0)


def copy_bandwidth(gib: float = 2.0) -> float:
    """Measured device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written.

    The practical HBM ceiling every memory-bound figure here is a fraction of.
    """
    n = int(gib * 2**30) // 2
    src = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def record(name: str, result: dict[str, Any]) -> pathlib.Path:
    """bench/results/<name>.json with device, versions (triton included) and command."""
    path = write_result(name, {"versions": versions(), **result})
    print(f"recorded in {path}")
    return path
