"""The Dockerfile builds both images with podman (no daemon, no registry: the
bases are made locally, see podman.py); the engine image serves a tiny model
as a non-root user and its healthcheck passes; the operator image runs
`pagoda operator` without torch, and `pagoda gateway` on a read-only root
filesystem as the chart runs it."""

from __future__ import annotations

import json
import shutil
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helm import REPO
from .podman import base_images, podman

pytestmark = pytest.mark.slow
USER = "1000:1000"


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    python_base, torch_base = base_images()
    built = {}
    for target in ("operator", "engine"):
        built[target] = f"localhost/pagoda-{target}:test"
        podman("build", "--format", "docker", "--target", target, "--build-arg", f"PYTHON_IMAGE={python_base}",
               "--build-arg", f"ENGINE_BASE={torch_base}", "-t", built[target], str(REPO))
    podman("image", "prune", "-f")  # the previous builds' layers
    return built


@pytest.mark.parametrize("target", ["operator", "engine"])
def test_images_run_as_non_root(images: dict[str, str], target: str) -> None:
    [config] = json.loads(podman("image", "inspect", images[target]).stdout)
    assert config["Config"]["User"] == USER


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, name: str) -> None:
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            assert time.monotonic() < deadline, podman("logs", name).stderr[-3000:]
            time.sleep(1)


def test_operator_image_runs_the_operator_without_torch(images: dict[str, str]) -> None:
    help_text = podman("run", "--rm", images["operator"], "operator", "--help").stdout
    assert "usage: pagoda operator" in help_text
    probe = "import importlib.util, pagoda.operator.handlers; print(importlib.util.find_spec('torch'))"
    out = podman("run", "--rm", "--entrypoint", "python3", images["operator"], "-c", probe).stdout
    assert out.strip() == "None"


@pytest.fixture
def engine_container(images: dict[str, str], tiny_model: Callable[..., Path], tmp_path: Path) -> Iterator[tuple[str, str]]:
    model = tmp_path / "model"
    shutil.copytree(tiny_model("llama"), model)
    for path in [tmp_path, model, *model.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # readable by the image's user
    port = _free_port()
    name = f"pagoda-engine-test-{port}"
    podman("run", "-d", "--name", name, "--network=host", "--read-only", "--tmpfs", "/tmp",
           "-v", f"{model}:/models/tiny:ro", "-e", f"PAGODA_PORT={port}", images["engine"],
           "/models/tiny", "--host", "127.0.0.1", "--served-model-name", "tiny")
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/health", name)
        yield name, url
    finally:
        podman("rm", "-f", name, check=False)


def test_engine_image_serves_a_tiny_model(engine_container: tuple[str, str]) -> None:
    name, url = engine_container
    body = json.dumps({"model": "tiny", "prompt": "Hello, my name is", "max_tokens": 8}).encode()
    request = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    assert answer["choices"][0]["text"] and answer["usage"]["completion_tokens"] == 8
    assert podman("exec", name, "id", "-u").stdout.strip() == USER.split(":")[0]
    assert podman("healthcheck", "run", name, check=False).returncode == 0


def test_operator_image_runs_the_gateway_read_only(images: dict[str, str]) -> None:
    """As the chart runs it (read-only root filesystem, no volume), with a
    static backend: no cluster to watch here."""
    port = _free_port()
    name = f"pagoda-gateway-test-{port}"
    podman("run", "-d", "--name", name, "--network=host", "--read-only", "--read-only-tmpfs=false",
           images["operator"], "gateway", "--host=127.0.0.1", f"--port={port}", "--backend", "tiny=http://127.0.0.1:9")
    try:
        _wait_http(f"http://127.0.0.1:{port}/ready", name)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as response:
            assert [m["id"] for m in json.loads(response.read())["data"]] == ["tiny"]
    finally:
        podman("rm", "-f", name, check=False)
