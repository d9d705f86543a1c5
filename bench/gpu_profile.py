"""Where a step's time goes: a few steps under torch.profiler, summarized per kernel and per host op.

Wall time per step says how long a step takes, not what bounds it. The summary answers that:
the device ops (kernels, copies, memsets) by total time, how many run per step, and how much of
the wall time the device was busy (the union of their intervals): a low busy fraction means the
device waits for the host (launches, Python), a high one that the kernels themselves set the pace.
Kernels replayed from a CUDA graph have no launch of their own: they are recorded under the
graph's launch (CUPTI reports them one by one), and the summary counts how many it attributed to
graph launches, so a profiler that shows a graph as one opaque entry is seen, not guessed.

Without CUDA (tests, CPU runs) the timeline is the CPU's: the "kernels" are the top-level ops.
The profiler adds host time to every op it records, so a busy fraction measured under it is a
lower bound of the unprofiled one.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity

TOP_KERNELS = 15
TOP_HOST_OPS = 10
NAME_WIDTH = 72


def profile_steps(step: Callable[[], Any], steps: int, top: int = TOP_KERNELS) -> dict[str, Any]:
    """The summary of `steps` calls of `step` under the profiler (CPU, and CUDA where present).

    One call runs under a throwaway profile first: the profiler's first start initialises CUPTI,
    whose cost would otherwise land in the window measured."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch.profiler.profile(activities=activities):
        step()
    _synchronize()
    with torch.profiler.profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _synchronize()
        wall_us = (time.perf_counter() - start) * 1e6
    return summarize(prof.events(), steps, wall_us, top)


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def summarize(events: Iterable[Any], steps: int, wall_us: float, top: int = TOP_KERNELS) -> dict[str, Any]:
    """Per-kernel and per-host-op totals of profiler events (torch's FunctionEvent, or anything with its
    name, id, device_type, time_range, cpu_parent, cpu_time_total and self_cpu_time_total)."""
    events = list(events)
    host = [e for e in events if e.device_type == DeviceType.CPU]
    device = [e for e in events if e.device_type != DeviceType.CPU]
    kernels = device or [e for e in host if e.cpu_parent is None and not _is_launch(e.name)]
    kernel_us = sum(_duration(e) for e in kernels)
    busy_us = _union_us(kernels)
    graph_launches, graph_kernels = _graph_attribution(host, device)
    return {
        "timeline": "cuda" if device else "cpu",
        "steps": steps,
        "wall_us_per_step": wall_us / steps,
        "kernel_us_per_step": kernel_us / steps,
        "busy_us_per_step": busy_us / steps,
        "busy_fraction": busy_us / wall_us if wall_us else 0.0,
        "kernels_per_step": len(kernels) / steps,
        "graph_launches_per_step": graph_launches / steps,
        "graph_kernels_per_step": graph_kernels / steps,
        "note": _graph_note(graph_launches, graph_kernels),
        "top_kernels": _top_kernels(kernels, kernel_us, steps, top),
        "top_host_ops": _top_host_ops(host, steps),
    }


def _duration(event: Any) -> float:
    return event.time_range.end - event.time_range.start


def _union_us(events: list[Any]) -> float:
    """Time covered by at least one event: kernels on several streams overlap, and overlapping time is busy once."""
    covered, end = 0.0, float("-inf")
    for start, stop in sorted((e.time_range.start, e.time_range.end) for e in events):
        if stop > end:
            covered += stop - max(start, end)
            end = stop
    return covered


def _is_launch(name: str) -> bool:
    """CUDA runtime and driver launch calls (cudaLaunchKernel, cuLaunchKernelEx for Triton, cudaGraphLaunch)."""
    return name.startswith("cu") and "Launch" in name


def _graph_attribution(host: list[Any], device: list[Any]) -> tuple[int, int]:
    """Graph launches, and the device ops whose correlation id is a graph launch's (those the graph ran)."""
    launches = {e.id: e.name for e in host if _is_launch(e.name)}
    graph_ids = {i for i, name in launches.items() if "GraphLaunch" in name}
    return len(graph_ids), sum(1 for e in device if e.id in graph_ids)


def _graph_note(graph_launches: int, graph_kernels: int) -> str:
    if not graph_launches:
        return "no CUDA graph launches"
    if graph_kernels:
        return f"CUDA graph replays' kernels listed one by one ({graph_kernels / graph_launches:.0f} per replay)"
    return ("CUDA graphs were launched but no kernel was attributed to them: either this profiler records a replay "
            "as one opaque entry (then its GPU time is missing from the table) or the correlation ids did not match "
            "(then the table is complete: compare kernels per step with an eager step's)")


def _top_kernels(kernels: list[Any], kernel_us: float, steps: int, top: int) -> list[dict[str, Any]]:
    """The `top` kernels by total time, then one row for the rest, so that the shares add up to 1."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for e in kernels:
        row = totals[short_name(e.name)]
        row[0] += 1
        row[1] += _duration(e)
    ranked = sorted(totals.items(), key=lambda item: -item[1][1])
    rows = [_kernel_row(name, calls, us, kernel_us, steps) for name, (calls, us) in ranked[:top]]
    rest = ranked[top:]
    if rest:
        rows.append(_kernel_row(f"({len(rest)} others)", sum(c for _, (c, _) in rest),
                                sum(us for _, (_, us) in rest), kernel_us, steps))
    return rows


def _kernel_row(name: str, calls: int, us: float, kernel_us: float, steps: int) -> dict[str, Any]:
    return {"name": name, "calls": calls, "calls_per_step": calls / steps, "total_us": us, "mean_us": us / calls,
            "share": us / kernel_us if kernel_us else 0.0}


def _top_host_ops(host: list[Any], steps: int, top: int = TOP_HOST_OPS) -> list[dict[str, Any]]:
    """Host ops by self time (their own, children's taken off): where the host's recorded time goes."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for e in host:
        row = totals[short_name(e.name)]
        row[0] += 1
        row[1] += e.self_cpu_time_total
        row[2] += e.cpu_time_total
    ranked = sorted(totals.items(), key=lambda item: -item[1][1])[:top]
    return [{"name": name, "calls_per_step": calls / steps, "self_us_per_step": self_us / steps,
             "total_us_per_step": total_us / steps} for name, (calls, self_us, total_us) in ranked]


_DROPPED = re.compile(r"^void |\(anonymous namespace\)::|at::native::|c10::")


def short_name(name: str, width: int = NAME_WIDTH) -> str:
    """A kernel's name without return type, parameter list and the common namespaces, cut to `width`:
    C++ kernel names run to hundreds of characters, mostly template arguments of the parameters."""
    name = _strip_parameters(_DROPPED.sub("", name))
    return name if len(name) <= width else name[: width - 3] + "..."


def _strip_parameters(name: str) -> str:
    """name without its final balanced "(...)" where that follows the name directly, as a parameter list does
    ("Memcpy HtoD (Pinned -> Device)" keeps its parenthesis)."""
    depth = 0
    for i in range(len(name) - 1, 0, -1):
        depth += (name[i] == ")") - (name[i] == "(")
        if depth == 0:
            return name[:i] if name[i] == "(" and not name[i - 1].isspace() else name
    return name


def format_profile(summary: dict[str, Any]) -> str:
    """The summary as a few printable lines: the headline, the kernel table, the host-op table."""
    s = summary
    lines = [
        f"profile of {s['steps']} steps: {s['wall_us_per_step'] / 1e3:.3f} ms wall per step, {s['timeline']} busy "
        f"{s['busy_us_per_step'] / 1e3:.3f} ms ({100 * s['busy_fraction']:.1f} %), kernels "
        f"{s['kernel_us_per_step'] / 1e3:.3f} ms in {s['kernels_per_step']:.0f} per step; {s['note']}",
        f"  {'kernel (per step)':{NAME_WIDTH}s} {'calls':>7s} {'us':>9s} {'mean us':>9s} {'share':>6s}",
    ]
    lines += [f"  {k['name']:{NAME_WIDTH}s} {k['calls_per_step']:7.1f} {k['total_us'] / s['steps']:9.1f} "
              f"{k['mean_us']:9.2f} {100 * k['share']:5.1f}%" for k in s["top_kernels"]]
    lines.append(f"  {'host op (per step, by self time)':{NAME_WIDTH}s} {'calls':>7s} {'self us':>9s} {'total us':>9s}")
    lines += [f"  {h['name']:{NAME_WIDTH}s} {h['calls_per_step']:7.1f} {h['self_us_per_step']:9.1f} "
              f"{h['total_us_per_step']:9.1f}" for h in s["top_host_ops"]]
    return "\n".join(lines)
