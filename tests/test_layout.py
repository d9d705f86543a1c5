"""The repository's folders import under `pagoda`, and none shadows the standard library."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cwd", [REPO, pathlib.Path("/")])
def test_import_root_maps_every_half(cwd: pathlib.Path) -> None:
    code = (
        "import operator, pagoda.engine, pagoda.kernels, pagoda.operator.v1alpha1 as v;"
        "print(operator.__file__); print(v.__file__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True).stdout
    stdlib_operator, crd_models = out.split()
    assert not stdlib_operator.startswith(str(REPO)), "a repository folder shadows the stdlib's operator"
    assert crd_models == str(REPO / "operator" / "v1alpha1.py")


def test_no_top_level_folder_is_a_package_named_like_the_stdlib() -> None:
    for folder in REPO.iterdir():
        if folder.name in sys.stdlib_module_names:
            assert not (folder / "__init__.py").exists(), folder
