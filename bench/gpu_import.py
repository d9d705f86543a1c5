"""Makes `pagoda` importable from a bare checkout, as on the device machine, without importing anything heavy.

The device machine has PyTorch, Triton and transformers but no pagoda
install; the repository maps its folders (engine/, kernels/) under the
import root `pagoda` through pyproject's package-dir, which is replayed here
when pagoda is not installed. Importing this module must not import Triton:
a CPU test run decides the interpreter mode at Triton's first import.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _ensure_pagoda_importable() -> None:
    try:
        import pagoda.engine  # noqa: F401
        return
    except ImportError:
        pass
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for name in sorted(package_dirs):  # parents sort before their children
        init = ROOT / package_dirs[name] / "__init__.py"
        if not init.exists():  # namespace portions (operator/) are not needed here
            continue
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)


_ensure_pagoda_importable()
