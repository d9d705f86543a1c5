"""bench/gpu_profile.py, the per-kernel breakdown the GPU benchmarks record, checked without a GPU: on a CPU
workload under the real profiler, and on synthetic CUDA events for the graph-replay attribution."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch
from torch.autograd import DeviceType

from bench.gpu_profile import format_profile, profile_steps, short_name, summarize

STEPS = 4


@pytest.fixture(scope="module")
def cpu_summary() -> dict[str, Any]:
    a, b = torch.randn(128, 128), torch.randn(128, 128)
    summary = profile_steps(lambda: torch.mm(a, b).relu_().sum(), STEPS, top=2)
    print(format_profile(summary))
    return summary


def test_cpu_profile_numbers_are_consistent(cpu_summary: dict[str, Any]) -> None:
    s = cpu_summary
    assert s["timeline"] == "cpu" and s["steps"] == STEPS and s["note"] == "no CUDA graph launches"
    assert s["kernels_per_step"] == 3  # mm, relu_, sum: the top-level ops
    assert 0 < s["busy_us_per_step"] <= s["kernel_us_per_step"] + 1e-6
    assert 0 < s["busy_fraction"] <= 1
    rows = s["top_kernels"]
    assert len(rows) == 3 and rows[-1]["name"] == "(1 others)"  # top 2, then the rest in one row
    assert all(r["calls"] > 0 and r["total_us"] >= 0 and r["mean_us"] == pytest.approx(r["total_us"] / r["calls"])
               for r in rows)
    assert sum(r["calls"] for r in rows) == 3 * STEPS
    assert math.isclose(sum(r["share"] for r in rows), 1.0, rel_tol=1e-6)
    assert [r["total_us"] for r in rows[:2]] == sorted((r["total_us"] for r in rows[:2]), reverse=True)
    names = {r["name"] for r in s["top_host_ops"]}
    assert "aten::mm" in names
    assert all(0 <= h["self_us_per_step"] <= h["total_us_per_step"] + 1e-6 for h in s["top_host_ops"])


def test_format_profile_has_a_line_per_row(cpu_summary: dict[str, Any]) -> None:
    lines = format_profile(cpu_summary).splitlines()
    assert lines[0].startswith(f"profile of {STEPS} steps")
    assert len(lines) == 1 + 1 + len(cpu_summary["top_kernels"]) + 1 + len(cpu_summary["top_host_ops"])


@dataclasses.dataclass
class _Range:
    start: float
    end: float


@dataclasses.dataclass
class _Event:
    """The fields of torch's FunctionEvent that summarize reads."""

    name: str
    id: int
    start: float
    end: float
    device_type: DeviceType = DeviceType.CPU
    cpu_parent: Any = None

    @property
    def time_range(self) -> _Range:
        return _Range(self.start, self.end)

    @property
    def cpu_time_total(self) -> float:
        return self.end - self.start if self.device_type == DeviceType.CPU else 0.0

    @property
    def self_cpu_time_total(self) -> float:
        return self.cpu_time_total


def _kernel(name: str, correlation: int, start: float, end: float) -> _Event:
    return _Event(name, correlation, start, end, DeviceType.CUDA)


def test_graph_replays_kernels_are_attributed_to_their_launch() -> None:
    """One step: a graph replay (launch 7) running three kernels, then a Triton kernel launched on its own
    (launch 8) that overlaps the last graph kernel on another stream: the overlap counts once as busy."""
    events = [
        _Event("cudaGraphLaunch", 7, 0, 5), _Event("cuLaunchKernelEx", 8, 6, 8),
        _kernel("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float> >(int)", 7, 10, 20),
        _kernel("_rms_norm_kernel", 7, 22, 30), _kernel("_rms_norm_kernel", 7, 30, 40),
        _kernel("_sample_kernel", 8, 35, 45),
    ]
    s = summarize(events, steps=1, wall_us=50.0)
    assert s["timeline"] == "cuda"
    assert (s["graph_launches_per_step"], s["graph_kernels_per_step"], s["kernels_per_step"]) == (1, 3, 4)
    assert "(3 per replay)" in s["note"]
    assert s["kernel_us_per_step"] == 38 and s["busy_us_per_step"] == 33 and s["busy_fraction"] == 33 / 50
    top = s["top_kernels"][0]
    assert (top["name"], top["calls"], top["total_us"], top["mean_us"]) == ("_rms_norm_kernel", 2, 18, 9)
    assert [h["name"] for h in s["top_host_ops"]] == ["cudaGraphLaunch", "cuLaunchKernelEx"]


def test_a_graph_without_attributed_kernels_is_reported() -> None:
    events = [_Event("cudaGraphLaunch", 7, 0, 5), _kernel("gemm", 99, 10, 20)]
    assert "no kernel was attributed" in summarize(events, steps=1, wall_us=30.0)["note"]


@pytest.mark.parametrize(("name", "short"), [
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, std::array<char*, 1ul> >"
     "(int, at::native::FillFunctor<float>, std::array<char*, 1ul>)",
     "vectorized_elementwise_kernel<4, FillFunctor<float>, std::array<char*, 1ul> >"),
    ("void (anonymous namespace)::softmax_warp_forward<float, float, float, 10, false>(float*, float const*, int)",
     "softmax_warp_forward<float, float, float, 10, false>"),
    ("_decode_attention_kernel", "_decode_attention_kernel"),
    ("Memcpy HtoD (Pinned -> Device)", "Memcpy HtoD (Pinned -> Device)"),
])
def test_short_name(name: str, short: str) -> None:
    assert short_name(name, width=200) == short


def test_short_name_cuts_long_names() -> None:
    long = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize64x64x64_warpgroupsize1x1x1_execute_segment_k_off_kernel"
    assert short_name(long, width=40) == long[:37] + "..."
