"""Shared pieces of the benchmarks: environment facts and result files."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

RESULTS_DIR = pathlib.Path(__file__).with_name("results")


def load_hf_paged(path: str, dtype: Any) -> Any:
    """transformers' model with the paged attention its `generate_batch` runs on: SDPA, or eager for
    families without an SDPA path (GPT-OSS, whose sinks only its eager attention computes)."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="paged|sdpa").eval()
    except ValueError:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="paged|eager").eval()


def environment() -> dict[str, Any]:
    """Device and versions, recorded with every result so numbers stay comparable."""
    import tokenizers
    import torch
    import transformers

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return {
        "device": device,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
        "torch_threads": torch.get_num_threads(),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_result(name: str, result: dict[str, Any]) -> pathlib.Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({**environment(), **result}, indent=2) + "\n")
    return path


class Timers:
    """Wall time and call count per name, gathered by wrapping the methods a benchmark measures."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
                self.calls[name] += 1

        return timed
