"""pagoda: LLM inference on Kubernetes.

The offline API (`LLM`, `SamplingParams`) is exported lazily so that
`import pagoda` stays cheap and torch-free for the operator, which installs
without the engine extra.
"""

import importlib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "LLM": "pagoda.engine.llm",
    "SamplingParams": "pagoda.engine.sampling_params",
    "RequestOutputKind": "pagoda.engine.sampling_params",
    "RequestOutput": "pagoda.engine.outputs",
    "CompletionOutput": "pagoda.engine.outputs",
}

__all__ = ["__version__", *_LAZY]


def _map_operator_portion() -> None:
    """Makes `pagoda.operator` importable from a source checkout (the editable install).

    operator/ has no __init__.py, so it can never shadow the standard library's
    `operator`. A wheel copies it into pagoda/operator and it imports as a
    namespace portion; setuptools' editable finder, however, maps only regular
    packages, so from a checkout the portion is registered here, over the
    repository's operator/ folder.
    """
    root = Path(__file__).resolve().parent.parent
    portion = root / "operator"
    if "pagoda.operator" in sys.modules or not (root / "pyproject.toml").is_file() or not portion.is_dir():
        return
    if importlib.util.find_spec("pagoda.operator") is not None:
        return  # a regular install already provides it
    spec = importlib.machinery.ModuleSpec("pagoda.operator", None, is_package=True)
    spec.submodule_search_locations = [str(portion)]
    sys.modules["pagoda.operator"] = importlib.util.module_from_spec(spec)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pagoda' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


_map_operator_portion()
