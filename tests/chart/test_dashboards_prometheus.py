"""The dashboards and the adapter rules against a real Prometheus (Debian's
package, on loopback) scraping a real `pagoda serve` and the `pagoda gateway`
in front of it under a short load: every expression evaluates without error
and returns data."""

from __future__ import annotations

import http.server
import json
import math
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import prometheus as prometheus_server

from . import kube_state_metrics
from .promql import adapter_rules, panel_queries, substitute, variable_queries

pytestmark = pytest.mark.slow

#: The labels a ServiceMonitor (or the chart's PodMonitor) puts on an engine's series.
NAMESPACE, LLMDEPLOYMENT, POD, MODEL = "ml", "tiny-llm", "tiny-llm-7d9f-abcde", "tiny"
#: And on the gateway's (in the same namespace here, so that $namespace lists one value).
GATEWAY_SERVICE, GATEWAY_POD = "pagoda-gateway", "pagoda-gateway-5c6d-fghij"
#: Every dashboard variable at "All", as Grafana sends it.
ALL = {"namespace": ".*", "llmdeployment": ".*", "model": ".*"}
LOAD_SECONDS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str | urllib.request.Request, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _wait(what: str, ready: Callable[[], bool], process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what} not ready after {timeout}s:\n{log.read_text()[-3000:]}")


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def engine(tiny_model: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`pagoda serve` of a tiny model; a small batch so that requests queue."""
    port, log = _free_port(), tmp_path_factory.mktemp("engine") / "serve.log"
    process = _start([sys.executable, "-m", "pagoda.cli", "serve", str(tiny_model("llama")),
                      "--host", "127.0.0.1", "--port", str(port), "--served-model-name", MODEL,
                      "--max-num-seqs", "4", "--max-model-len", "256",
                      # The load's prompts repeat themselves: n-gram drafts fill the speculative panel.
                      "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 2}'], log)
    url = f"http://127.0.0.1:{port}"
    _wait("pagoda serve", lambda: _get(url + "/health") is not None, process, log)
    yield url
    _stop(process)


@pytest.fixture(scope="module")
def gateway(engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`pagoda gateway` in front of the engine, and of an address nothing listens on,
    so that some requests are retried on the engine (the retries panel)."""
    port, log = _free_port(), tmp_path_factory.mktemp("gateway") / "gateway.log"
    process = _start([sys.executable, "-m", "pagoda.cli", "gateway", "--host", "127.0.0.1", "--port", str(port),
                      "--backend", f"{MODEL}={engine}", "--backend", f"{MODEL}=http://127.0.0.1:{_free_port()}"], log)
    url = f"http://127.0.0.1:{port}"
    _wait("pagoda gateway", lambda: _get(url + "/ready") is not None, process, log)
    yield url
    _stop(process)


@pytest.fixture(scope="module")
def kube_state_metrics_endpoint() -> Iterator[str]:
    body = kube_state_metrics.exposition(NAMESPACE, LLMDEPLOYMENT, POD).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture(scope="module")
def prometheus(engine: str, gateway: str, kube_state_metrics_endpoint: str,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = prometheus_server.start(tmp_path_factory.mktemp("prometheus"), [
        prometheus_server.scrape_config("engine", urllib.parse.urlsplit(engine).netloc,
                                        {"namespace": NAMESPACE, "service": LLMDEPLOYMENT, "pod": POD}),
        prometheus_server.scrape_config("gateway", urllib.parse.urlsplit(gateway).netloc,
                                        {"namespace": NAMESPACE, "service": GATEWAY_SERVICE, "pod": GATEWAY_POD}),
        prometheus_server.scrape_config("kube-state-metrics", kube_state_metrics_endpoint, honor_labels=True)])
    yield server.url
    server.stop()


def _complete(url: str, i: int) -> None:
    # A shared prefix (prefix-cache hits); a stop string on some (finish reasons stop and length).
    body = {"model": MODEL, "prompt": "The quick brown fox jumps over the lazy dog. " * 4 + str(i),
            "max_tokens": 24, "temperature": 0.8, "seed": i, **({"stop": ["e"]} if i % 2 else {})}
    request = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    _get(request, timeout=60)


@pytest.fixture(scope="module")
def loaded(gateway: str, prometheus: str) -> str:
    """Prometheus once it has scraped the engine and the gateway through a short load."""
    deadline = time.monotonic() + LOAD_SECONDS
    with ThreadPoolExecutor(16) as pool:
        def worker(k: int) -> None:
            i = k
            while time.monotonic() < deadline:
                _complete(gateway, i)
                i += 16
        list(pool.map(worker, range(16)))
    time.sleep(3)  # a few more scrapes
    return prometheus


def _api(prometheus: str, path: str, **params: str) -> Any:
    query = urllib.parse.urlencode(params)
    try:
        answer = json.loads(_get(f"{prometheus}/api/v1/{path}?{query}"))
    except urllib.error.HTTPError as exc:
        answer = json.loads(exc.read())
    assert answer["status"] == "success", f"{params}: {answer.get('errorType')}: {answer.get('error')}"
    return answer["data"]


def _values(result: dict) -> list[float]:
    return [float(sample["value"][1]) for sample in result["result"]]


@pytest.mark.parametrize("query", panel_queries(), ids=lambda q: q.where)
def test_panel_returns_data(loaded: str, query: Any) -> None:
    data = _api(loaded, "query", query=substitute(query.expr, ALL))
    values = _values(data)
    assert values, f"{query.where}: no series for {query.expr}"
    assert any(math.isfinite(v) for v in values), f"{query.where}: only NaN/Inf: {data['result']}"


@pytest.mark.parametrize("query", panel_queries(), ids=lambda q: q.where)
def test_panel_selects_by_the_variables(loaded: str, query: Any) -> None:
    """A named LLMDeployment (or, on the gateway's dashboard, model) keeps its
    series; another one has none."""
    chosen = {"namespace": NAMESPACE, "llmdeployment": LLMDEPLOYMENT, "model": MODEL}
    assert _values(_api(loaded, "query", query=substitute(query.expr, chosen))), query.where
    narrowest = "llmdeployment" if "$llmdeployment" in query.expr else "model"
    assert f"${narrowest}" in query.expr, f"{query.where} selects by neither $llmdeployment nor $model"
    other = {**chosen, narrowest: "another"}
    assert not _values(_api(loaded, "query", query=substitute(query.expr, other))), query.where


@pytest.mark.parametrize("variable", variable_queries(), ids=lambda v: v.where)
def test_variable_lists_values(loaded: str, variable: Any) -> None:
    values = _api(loaded, f"label/{variable.label}/values", **{"match[]": substitute(variable.match, ALL)})
    expected = {"namespace": NAMESPACE, "service": LLMDEPLOYMENT, "model_name": MODEL, "model": MODEL}[variable.label]
    assert values == [expected], variable.where


def test_adapter_rule_serves_the_per_pod_queue_metric(loaded: str) -> None:
    """The rule as prometheus-adapter runs it: discovery by seriesQuery, then
    metricsQuery for the pods of one namespace, grouped by pod."""
    [rule] = adapter_rules()
    series = _api(loaded, "series", **{"match[]": rule["seriesQuery"]})
    assert {(s["namespace"], s["pod"]) for s in series} == {(NAMESPACE, POD)}
    query = (rule["metricsQuery"].replace("<<.Series>>", "pagoda_requests_waiting")
             .replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod=~"{POD}"').replace("<<.GroupBy>>", "pod"))
    [sample] = _api(loaded, "query", query=query)["result"]
    assert sample["metric"] == {"pod": POD} and float(sample["value"][1]) >= 0
