"""Two real engines on loopback (threads of the test process, as tests/server
runs them) and `pagoda gateway` in front of them as its own process."""

from __future__ import annotations

import contextlib
import pathlib
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

pytest.importorskip("aiohttp")

from pagoda.processes import start_pagoda  # noqa: E402
from tests.server.conftest import RunningServer, free_port, serve_in_thread  # noqa: E402

MODEL = "tiny"


@dataclass
class GatewayProcess:
    url: str
    log: pathlib.Path

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the gateway's /metrics (0 when absent)."""
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in urllib.request.urlopen(f"{self.url}/metrics", timeout=10).read().decode().splitlines():
            if line.startswith(f"{name}{{{wanted}}} "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@contextlib.contextmanager
def run_gateway(args: list[str], log: pathlib.Path) -> Iterator[GatewayProcess]:
    """`pagoda gateway ARGS` on a free loopback port, ready when this yields."""
    with log.open("wb") as out:
        try:
            process, url = start_pagoda(["gateway", *args], timeout=60, stdout=out, stderr=subprocess.STDOUT)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}:\n{log.read_text()}") from None
    try:
        yield GatewayProcess(url, log)
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="session")
def engines(tiny_model: Callable[..., pathlib.Path]) -> Iterator[tuple[RunningServer, RunningServer]]:
    """Two replicas of one model: same weights, so greedy outputs agree whichever serves."""
    argv = [str(tiny_model("llama")), "--served-model-name", MODEL, "--max-model-len", "256"]
    with serve_in_thread(argv) as first, serve_in_thread(argv) as second:
        yield first, second


@pytest.fixture(scope="session")
def unreachable() -> str:
    """A loopback URL nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def gateway(engines: tuple[RunningServer, RunningServer], unreachable: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """`tiny` on both engines; `dead` on a URL nothing listens on; sessions named by `x-session-id`."""
    first, second = engines
    backends = [f"{MODEL}={first.url}", f"{MODEL}={second.url}", f"dead={unreachable}"]
    with run_gateway([*(arg for b in backends for arg in ("--backend", b)), "--session-header", "x-session-id"],
                     tmp_path_factory.mktemp("gateway") / "gateway.log") as running:
        yield running


@pytest.fixture(scope="session")
def flaky_gateway(engines: tuple[RunningServer, RunningServer], unreachable: str,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """`tiny` on a dead URL and on one engine."""
    with run_gateway(["--backend", f"{MODEL}={unreachable}", "--backend", f"{MODEL}={engines[0].url}"],
                     tmp_path_factory.mktemp("flaky-gateway") / "gateway.log") as running:
        yield running


@pytest.fixture(scope="session")
def busy_engines(tiny_model: Callable[..., pathlib.Path]) -> Iterator[list[RunningServer]]:
    """Two replicas that run one request at a time and queue one more (then answer 503)."""
    argv = [str(tiny_model("llama")), "--served-model-name", MODEL, "--max-num-seqs", "1", "--max-queue-len", "1"]
    with serve_in_thread(argv) as first, serve_in_thread(argv) as second:
        yield [first, second]


def _backends(engines: list[RunningServer]) -> list[str]:
    return [arg for engine in engines for arg in ("--backend", f"{MODEL}={engine.url}")]


@pytest.fixture(scope="session")
def busy_gateway(busy_engines: list[RunningServer],
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, list[RunningServer]]]:
    """The busy replicas behind a gateway whose load bound never spills, so that only a full
    queue moves a request elsewhere (and that engines' own loads do not either)."""
    with run_gateway([*_backends(busy_engines), "--load-factor", "1000", "--engine-load-interval", "0"],
                     tmp_path_factory.mktemp("busy-gateway") / "gateway.log") as gw:
        yield gw, busy_engines


@pytest.fixture(scope="session")
def least_load_gateway(busy_engines: list[RunningServer],
                       tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The busy replicas behind a least-load gateway that reads their loads five times a second."""
    with run_gateway([*_backends(busy_engines), "--routing", "least-load", "--engine-load-interval", "0.2"],
                     tmp_path_factory.mktemp("least-load-gateway") / "gateway.log") as gw:
        yield gw
