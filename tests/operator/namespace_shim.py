"""Makes `pagoda.operator` importable from a setuptools *editable* install.

operator/ is a namespace portion (no __init__.py, so it can never shadow the
standard library's `operator`). A regular install copies it into
site-packages/pagoda/operator and it imports; setuptools' editable finder,
however, only resolves namespace packages found on sys.path, not one nested
under the regular package `pagoda`, so in the development venv
`import pagoda.operator` fails.  Until the project's import root handles
that, the operator's tests register the portion themselves.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

OPERATOR_DIR = Path(__file__).resolve().parents[2] / "operator"


def install() -> None:
    """Registers `pagoda.operator` as a namespace package over operator/, if needed."""
    try:
        importlib.import_module("pagoda.operator")
        return
    except ModuleNotFoundError:
        pass
    spec = importlib.machinery.ModuleSpec("pagoda.operator", None, is_package=True)
    spec.submodule_search_locations = [str(OPERATOR_DIR)]
    module = importlib.util.module_from_spec(spec)
    sys.modules["pagoda.operator"] = module
    import pagoda

    pagoda.operator = module  # type: ignore[attr-defined]
