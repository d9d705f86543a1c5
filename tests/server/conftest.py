"""A real uvicorn serving a tiny model on loopback, started in a thread of the test process.

In-process, tests can also look at the engine behind the HTTP API (free KV
blocks, live requests); the subprocess tests of `pagoda serve` cover the CLI
and signals. Raw HTTP goes through http.client so that tests control bodies,
headers and disconnects byte for byte.
"""

from __future__ import annotations

import http.client
import json
import pathlib
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from pagoda.engine.entrypoints.api_server import ServerState, build_app  # noqa: E402
from pagoda.engine.entrypoints.args import parse_serve_args  # noqa: E402
from pagoda.processes import free_port  # noqa: E402

API_KEY = "test-key"
MODEL_NAME = "tiny"
MAX_MODEL_LEN = 256


@dataclass
class HTTPResult:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class RunningServer:
    host: str
    port: int
    app: Any
    api_key: str | None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def state(self) -> ServerState:
        return self.app.state.server

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                auth: bool = True, timeout: float = 60) -> HTTPResult:
        """One HTTP request; a dict or list body is sent as JSON, bytes as they are."""
        all_headers = {"Content-Type": "application/json"}
        if auth and self.api_key:
            all_headers["Authorization"] = f"Bearer {self.api_key}"
        all_headers.update(headers or {})
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=data, headers=all_headers)
            resp = conn.getresponse()
            return HTTPResult(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of /metrics (labels besides model_name must match)."""
        wanted = {"model_name": MODEL_NAME, **labels}
        for line in self.request("GET", "/metrics").body.decode().splitlines():
            if not line.startswith(name + "{"):
                continue
            label_text = line[len(name) + 1 : line.index("}")]
            found = dict(part.split("=", 1) for part in label_text.split(","))
            if {k: v.strip('"') for k, v in found.items()} == wanted:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Until the engine holds no request and no KV block, as the gauges also report."""
        engine = self.state.engine.engine
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not engine.requests and engine.block_manager.usage == 0.0 and self.state.engine.stats.num_running == 0:
                return
            time.sleep(0.02)
        raise AssertionError(f"engine not idle: {len(engine.requests)} requests, usage {engine.block_manager.usage}")


@contextlib.contextmanager
def serve_in_thread(argv: list[str]) -> Iterator[RunningServer]:
    """`pagoda serve ARGV`, but in a thread of this process, on a free loopback port."""
    settings = parse_serve_args([*argv, "--host", "127.0.0.1", "--port", str(free_port())], environ={})
    if settings.engine.kv_cache_memory_bytes is None and settings.engine.num_kv_blocks is None:
        # Tiny models need little cache: the CPU default (1 GiB) for every server a session keeps
        # running would add up to most of the machine's memory.
        settings.engine.kv_cache_memory_bytes = 64 << 20
    app = build_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                            access_log=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    try:
        yield RunningServer(settings.host, settings.port, app, settings.api_key)
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="session")
def model_dir(tiny_model: Callable[..., pathlib.Path]) -> pathlib.Path:
    return tiny_model("llama")


@pytest.fixture(scope="session")
def server(model_dir: pathlib.Path) -> Iterator[RunningServer]:
    """The shared server: API key on, small context so long-prompt errors are cheap."""
    with serve_in_thread([str(model_dir), "--served-model-name", MODEL_NAME, "--api-key", API_KEY,
                          "--max-model-len", str(MAX_MODEL_LEN)]) as running:
        yield running


@pytest.fixture
def idle_server(server: RunningServer) -> Iterator[RunningServer]:
    """The shared server, checked idle (nothing running, every KV block free) after the test."""
    yield server
    server.wait_idle()
