"""pagoda: LLM inference on Kubernetes.

The offline API (`LLM`, `SamplingParams`) is exported lazily so that
`import pagoda` stays cheap and torch-free for the operator, which installs
without the engine extra.
"""

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "LLM": "pagoda.engine.llm",
    "SamplingParams": "pagoda.engine.sampling_params",
    "RequestOutput": "pagoda.engine.outputs",
    "CompletionOutput": "pagoda.engine.outputs",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pagoda' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
