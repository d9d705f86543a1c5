"""Queue-depth autoscaling end to end, with the real tools that consume the
chart's rules: the operator's HPA scales an LLMDeployment's Deployment on
`pagoda_requests_waiting` served by prometheus-adapter (the chart's
installed rules ConfigMap), which reads Prometheus, which scrapes a real
`pagoda serve` kept busy by a bounded load.

The engine runs here on loopback, not in the simulated pod: Prometheus
labels its series with the namespace and name of the LLMDeployment's first
KWOK pod, as a PodMonitor would. Pods added by the scale-up have no series;
the HPA controller counts them as idle while scaling up and as on target
while scaling down, as it does for any pod whose metric is missing.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from pagoda.engine.fixtures import make_tiny_model

from e2e import samples
from e2e.cluster import prometheus as prometheus_server
from e2e.cluster import processes
from e2e.cluster.client import Cluster, KubectlError
from e2e.cluster.launcher import free_port, http_ok
from e2e.cluster.prometheus import Prometheus
from e2e.cluster.prometheus_adapter import PrometheusAdapter
from e2e.stack import OperatorProcess, Release

pytestmark = pytest.mark.slow

METRIC = "pagoda_requests_waiting"
MODEL = "tiny"
#: The engine runs at most this many sequences; the other clients' requests wait.
MAX_NUM_SEQS = 2
CLIENTS = 16
#: Upper bound of the load, whatever happens.
LOAD_LIMIT_S = 150
SCALE_TIMEOUT_S = 90

T = TypeVar("T")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`pagoda serve` of a tiny random-weight model on loopback; its URL."""
    work = tmp_path_factory.mktemp("engine")
    model = make_tiny_model(work / "model", "llama")
    url = f"http://127.0.0.1:{free_port()}"
    process = processes.start("pagoda-serve", [
        sys.executable, "-m", "pagoda.cli", "serve", str(model), "--host", "127.0.0.1",
        "--port", str(urllib.parse.urlsplit(url).port), "--served-model-name", MODEL,
        "--max-num-seqs", str(MAX_NUM_SEQS), "--max-model-len", "256"], work)
    try:
        assert processes.wait_until(lambda: not process.alive() or http_ok(url + "/health"), 180, 0.5) and process.alive(), \
            f"pagoda serve did not start:\n{process.log_tail()}"
        yield url
    finally:
        process.stop()


@pytest.fixture
def autoscaled(kube_cluster: Cluster, namespace: str, operator: OperatorProcess) -> str:
    """An LLMDeployment with autoscaling (1 to 3 replicas, 4 waiting requests
    per replica) reconciled by the operator; the name of its one Ready pod.
    Scale-down is not stabilized, so that the test sees it within seconds."""
    if kube_cluster.external:
        pytest.skip("the adapter runs on this machine, which an external cluster's API server cannot reach")
    manifest = samples.llm_deployment("queue", storage_class=kube_cluster.storage_class)
    manifest["spec"]["autoscaling"]["scaleDown"] = {"stabilizationWindowSeconds": 0}
    kube_cluster.apply(manifest, namespace=namespace)

    def ready_pod() -> str | None:
        deployment = kube_cluster.get("deployment", "queue", namespace)
        if not deployment or not kube_cluster.get("hpa", "queue", namespace):
            return None
        selector = ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items())
        pods = kube_cluster.get("pods", namespace=namespace, selector=selector)["items"]
        ready = [p["metadata"]["name"] for p in pods
                 if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]
        return ready[0] if len(pods) == 1 and ready else None

    try:
        return kube_cluster.wait_for("a Ready pod and the HPA of the LLMDeployment", ready_pod, timeout=90)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\noperator log:\n{operator.log_tail()}") from None


@pytest.fixture
def prometheus(engine: str, namespace: str, autoscaled: str, tmp_path: Path) -> Iterator[Prometheus]:
    """Prometheus scraping the engine as the pod `autoscaled` of `namespace`."""
    server = prometheus_server.start(tmp_path / "prometheus", [prometheus_server.scrape_config(
        "engine", urllib.parse.urlsplit(engine).netloc, {"namespace": namespace, "pod": autoscaled})])
    yield server
    server.stop()


@pytest.fixture
def adapter(kube_cluster: Cluster, release: Release, prometheus: Prometheus,
            tmp_path: Path) -> Iterator[PrometheusAdapter]:
    """prometheus-adapter with the rules ConfigMap the chart installed, as the
    prometheus-adapter chart's `rules.existing` would mount it."""
    [config_map] = [o for o in release.of_kind("ConfigMap") if o["metadata"]["name"].endswith("-prometheus-adapter")]
    installed = kube_cluster.get("configmap", config_map["metadata"]["name"], config_map["metadata"]["namespace"])
    served = PrometheusAdapter(kube_cluster, tmp_path / "adapter", prometheus.url, installed["data"]["config.yaml"])
    served.start()
    yield served
    served.stop()


class Load:
    """CLIENTS threads sending completions back to back until stopped, or
    LOAD_LIMIT_S at most: with MAX_NUM_SEQS running, the rest wait."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.stopping = threading.Event()
        self.deadline = time.monotonic() + LOAD_LIMIT_S
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, failure: type[BaseException] | None, *_: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)
        if failure is None:
            assert not self.errors, f"requests failed under load: {self.errors[:3]}"

    def _client(self, i: int) -> None:
        body = json.dumps({"model": MODEL, "prompt": f"Request {i}: the quick brown fox", "max_tokens": 64,
                           "ignore_eos": True}).encode()
        while not self.stopping.is_set() and time.monotonic() < self.deadline:
            request = urllib.request.Request(self.engine + "/v1/completions", body,
                                             {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    response.read()
            except OSError as exc:
                self.errors.append(exc)
                return


def _quantity(value: str) -> float:
    """A Kubernetes quantity as the custom metrics API writes it: "14", "13500m"."""
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def _served(cluster: Cluster, namespace: str) -> dict[str, float]:
    """pod -> value of the metric, read through the API server as the HPA
    controller does; empty until the adapter has listed the pod's series."""
    raw = cluster.kubectl("get", "--raw", f"/apis/custom.metrics.k8s.io/v1beta1/namespaces/{namespace}/pods/*/{METRIC}",
                          check=False)
    if raw.returncode != 0:
        if f"could not find the metric {METRIC}" in raw.stderr:
            return {}
        raise KubectlError(["get", "--raw"], raw.returncode, raw.stderr)
    answer = json.loads(raw.stdout)
    assert all(item["metricName"] == METRIC and item["describedObject"]["kind"] == "Pod" for item in answer["items"])
    return {item["describedObject"]["name"]: _quantity(item["value"]) for item in answer["items"]}


def _replicas(cluster: Cluster, namespace: str) -> tuple[int, int]:
    """(the Deployment's desired replicas, the HPA's current replicas)."""
    deployment = cluster.get("deployment", "queue", namespace) or {}
    hpa = cluster.get("hpa", "queue", namespace) or {}
    return deployment.get("spec", {}).get("replicas", 0), hpa.get("status", {}).get("currentReplicas", 0)


def _wait(cluster: Cluster, what: str, condition: Callable[[], T | None], adapter: PrometheusAdapter,
          namespace: str) -> T:
    """`cluster.wait_for`, failing with what the HPA and the adapter said."""
    try:
        return cluster.wait_for(what, condition, timeout=SCALE_TIMEOUT_S, interval=1)
    except TimeoutError as exc:
        events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                                 "involvedObject.kind=HorizontalPodAutoscaler", check=False).stdout
        log = adapter.process.log_tail() if adapter.process else ""
        raise AssertionError(f"{exc}\nHPA: {cluster.get('hpa', 'queue', namespace)}\nevents:\n{events}\n"
                             f"adapter log:\n{log}") from None


def test_waiting_requests_scale_the_deployment_up_and_back(kube_cluster: Cluster, namespace: str, engine: str,
                                                           autoscaled: str, adapter: PrometheusAdapter) -> None:
    idle = _wait(kube_cluster, "the idle pod's metric", lambda: _served(kube_cluster, namespace) or None,
                 adapter, namespace)
    assert idle == {autoscaled: 0}

    hpa = kube_cluster.get("hpa", "queue", namespace)
    target = _quantity(hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"])
    maximum = hpa["spec"]["maxReplicas"]
    with Load(engine):
        def queued() -> dict[str, float] | None:
            served = _served(kube_cluster, namespace)
            return served if served.get(autoscaled, 0) > 2 * target else None

        busy = _wait(kube_cluster, f"more than {2 * target:g} waiting requests served", queued, adapter, namespace)
        assert set(busy) == {autoscaled}
        _wait(kube_cluster, f"the HPA scaling the Deployment to {maximum}",
              lambda: _replicas(kube_cluster, namespace) == (maximum, maximum), adapter, namespace)

    _wait(kube_cluster, "no waiting requests served once the load stopped",
          lambda: _served(kube_cluster, namespace).get(autoscaled) == 0, adapter, namespace)
    _wait(kube_cluster, f"the HPA scaling the Deployment back to {hpa['spec']['minReplicas']}",
          lambda: _replicas(kube_cluster, namespace) == (hpa["spec"]["minReplicas"],) * 2, adapter, namespace)
