"""Daemonless podman for the image tests, and the local base images they build on.

No registry is reachable here, so the bases are made locally: Debian's root
filesystem by debootstrap (with python3 and venv), and for the engine that
filesystem plus the torch of the running interpreter (its distributions'
files, dependencies included), standing in for a CUDA PyTorch base. Podman
runs with a configuration of its own (runc, the cgroupfs cgroup manager, no
default ulimits) and keeps its storage under ~/.cache/pagoda/podman, so the
bases are built once.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pagoda" / "podman"
PYTHON_BASE = "localhost/pagoda-test/debian-python:bookworm"
TORCH_BASE = "localhost/pagoda-test/debian-torch:bookworm"
#: The machine's trust store, so pip inside builds trusts what the host trusts.
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
_SITE = "usr/local/lib/python3.11/dist-packages"


def env() -> dict[str, str]:
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "containers.conf").write_text(
        '[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n')
    (CACHE / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{CACHE / "storage"}"\nrunroot = "{CACHE / "run"}"\n')
    return {**os.environ, "CONTAINERS_CONF": str(CACHE / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(CACHE / "storage.conf")}


def podman(*args: str, timeout: float = 1800, check: bool = True, **kwargs) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("podman")
    assert binary, "no podman: `make test` installs Debian's podman, runc and debootstrap (mk/chart.mk)"
    result = subprocess.run([binary, *args], env=env(), capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def _exists(image: str) -> bool:
    return podman("image", "exists", image, check=False).returncode == 0


def _debian_rootfs(target: Path) -> None:
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    subprocess.run([debootstrap, "--variant=minbase", "--include=python3,python3-venv", "bookworm", str(target),
                    "http://deb.debian.org/debian"], check=True, capture_output=True, timeout=1800)
    shutil.rmtree(target / "var/cache/apt/archives", ignore_errors=True)
    (target / "etc/ssl/certs").mkdir(parents=True, exist_ok=True)
    shutil.copy(CA_BUNDLE, target / "etc/ssl/certs/ca-certificates.crt")


def _requirement_closure(name: str) -> list[importlib.metadata.Distribution]:
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = [name]
    while todo:
        key = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if key in found:
            continue
        try:
            dist = importlib.metadata.distribution(key)
        except importlib.metadata.PackageNotFoundError:
            continue  # a marker excluded it here
        found[key] = dist
        todo += [re.match(r"[A-Za-z0-9._-]+", r)[0] for r in dist.requires or [] if "extra ==" not in r]
    return list(found.values())


def _import(rootfs: Path, image: str, extra: list[importlib.metadata.Distribution]) -> None:
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        archive = Path(tmp) / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(rootfs, arcname=".")
            for dist in extra:
                for file in dist.files or []:
                    path = Path(dist.locate_file(file))
                    if path.is_file() and ".." not in file.parts:
                        tar.add(path, arcname=f"{_SITE}/{file}")
        podman("import", "--change", f"ENV PIP_CERT={CA_BUNDLE}", str(archive), image)


def base_images() -> tuple[str, str]:
    """(python base, torch base), built when missing."""
    if not (_exists(PYTHON_BASE) and _exists(TORCH_BASE)):
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            rootfs = Path(tmp) / "rootfs"
            _debian_rootfs(rootfs)
            _import(rootfs, PYTHON_BASE, [])
            assert sys.version_info[:2] == (3, 11), "the torch base reuses this interpreter's torch: Python 3.11"
            _import(rootfs, TORCH_BASE, _requirement_closure("torch"))
    return PYTHON_BASE, TORCH_BASE
