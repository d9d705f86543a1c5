"""`pagoda gateway` from this checkout, with the arguments the chart gives its
container and a token of the chart's gateway ServiceAccount (so the chart's
gateway RBAC is what is tested), following an LLMDeployment through the real
API server: the operator's Service gets EndpointSlices from the real
kube-controller-manager once the KWOK pods are Ready, and the gateway's HTTP
API shows the model, its adapter and its ready endpoints as they come and go.

KWOK pods' addresses are unreachable, so nothing is proxied to them: only
what the gateway knows is checked, and the 404 of a model that is gone.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e import samples
from e2e.cluster.client import Cluster
from e2e.stack import GatewayProcess, OperatorProcess, Release
from pagoda.operator.flags import DEFAULT_PORT as PORT
from pagoda.operator.gateway import metrics
from pagoda.operator.gateway.proxy import UPSTREAM_HEADER
from pagoda.operator.manifests.meta import OWNER_LABEL
from pagoda.operator.scale_to_zero import LAST_REQUEST_ANNOTATION

CONVERGE_S = 90


@pytest.fixture(scope="module")
def gateway(release: Release, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    process = GatewayProcess(release, tmp_path_factory.mktemp("gateway") / "gateway.log")
    process.start()
    try:
        release.cluster.wait_for("the gateway to list the cluster", lambda: _ready(process), timeout=60)
        yield process
    finally:
        process.stop()


def _exchange(gateway: GatewayProcess, path: str, body: dict[str, Any] | None = None,
              timeout: float = 15) -> tuple[int, Message, bytes]:
    """(status, headers, body) of a GET, or of a POST of `body` as JSON."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(gateway.url + path, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def _request(gateway: GatewayProcess, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
    status, _, reply = _exchange(gateway, path, body)
    return status, reply


def _ready(gateway: GatewayProcess) -> bool:
    try:
        return _request(gateway, "/ready")[0] == 200
    except OSError:  # not listening yet
        assert gateway.alive(), gateway.log_tail()
        return False


def _models(gateway: GatewayProcess) -> dict[str, str | None]:
    """Each model name /v1/models lists, with its parent (an adapter's base model)."""
    status, body = _request(gateway, "/v1/models")
    assert status == 200, body
    return {m["id"]: m["parent"] for m in json.loads(body)["data"]}


def _endpoints(gateway: GatewayProcess) -> dict[str, float]:
    """pagoda_gateway_endpoints of each model, from /metrics."""
    status, body = _request(gateway, "/metrics")
    assert status == 200, body
    return {sample.labels["model"]: sample.value for family in text_string_to_metric_families(body.decode())
            for sample in family.samples if sample.name == metrics.ENDPOINTS}


def _ready_pods(cluster: Cluster, namespace: str, name: str) -> int:
    pods = (cluster.get("pods", namespace=namespace, selector=f"{OWNER_LABEL}={name}") or {}).get("items", [])
    return sum(any(c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", []))
               for p in pods if not p["metadata"].get("deletionTimestamp"))


def _wait_endpoints(cluster: Cluster, gateway: GatewayProcess, operator: OperatorProcess, namespace: str, name: str,
                    models: list[str], replicas: int) -> None:
    """Until `replicas` pods are Ready and the gateway counts as many endpoints for each of `models`."""
    def converged() -> bool:
        counts = _endpoints(gateway)
        return _ready_pods(cluster, namespace, name) == replicas and all(counts.get(m) == replicas for m in models)

    try:
        cluster.wait_for(f"{replicas} ready endpoints of {models}", converged, timeout=CONVERGE_S)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}: gateway counts {_endpoints(gateway)}, "
                             f"{_ready_pods(cluster, namespace, name)} pods Ready\n"
                             f"gateway log:\n{gateway.log_tail()}\noperator log:\n{operator.log_tail()}") from None


def test_gateway_routes_follow_an_llmdeployment(kube_cluster: Cluster, namespace: str, operator: OperatorProcess,
                                                gateway: GatewayProcess) -> None:
    # Names of this namespace alone: the gateway watches every namespace,
    # where other scenarios' samples serve the same default name.
    served, adapter = f"{namespace}-qwen", f"{namespace}-sql"
    kube_cluster.apply(samples.claim("loras", storage_class=kube_cluster.storage_class), namespace=namespace)
    manifest = samples.llm_deployment("routed", autoscaling=False, storage_class=kube_cluster.storage_class,
                                      adapters=[{"name": adapter, "source": "pvc://loras/sql"}])
    manifest["spec"]["model"]["servedName"] = served
    kube_cluster.apply(manifest, namespace=namespace)

    _wait_endpoints(kube_cluster, gateway, operator, namespace, "routed", [served, adapter], replicas=1)
    assert _request(gateway, "/ready")[0] == 200
    models = _models(gateway)
    assert (models[served], models[adapter]) == (None, served)

    kube_cluster.kubectl("patch", samples.PLURAL, "routed", "-n", namespace, "--type=merge",
                         "-p", json.dumps({"spec": {"replicas": 2}}))
    _wait_endpoints(kube_cluster, gateway, operator, namespace, "routed", [served, adapter], replicas=2)

    kube_cluster.kubectl("delete", samples.PLURAL, "routed", "-n", namespace, "--timeout=60s")
    kube_cluster.wait_for("the model gone from /v1/models", lambda: not {served, adapter} & set(_models(gateway)),
                          timeout=30)
    assert not {served, adapter} & set(_endpoints(gateway))
    status, body = _request(gateway, "/v1/completions", {"model": served, "prompt": "Hello", "max_tokens": 1})
    assert status == 404, body
    error = json.loads(body)["error"]
    assert (error["code"], error["param"]) == ("model_not_found", "model") and served in error["message"]


def test_a_request_scales_a_model_up_from_zero(kube_cluster: Cluster, namespace: str, operator: OperatorProcess,
                                               gateway: GatewayProcess) -> None:
    """minReplicas 0: never requested, the model has no pod; the gateway's first
    request for it stamps the resource, the operator brings one replica back,
    and the request waits for it and is sent to it. The replica is a KWOK pod
    whose address serves nothing: the gateway answers 502 after trying it, or
    relays what the network answers there (a sandbox's proxy), naming the pod
    it was sent to."""
    served = f"{namespace}-lazy"
    manifest = samples.llm_deployment("lazy", storage_class=kube_cluster.storage_class)
    manifest["spec"]["model"]["servedName"] = served
    manifest["spec"]["autoscaling"].update(minReplicas=0, scaleToZeroDelaySeconds=600)
    kube_cluster.apply(manifest, namespace=namespace)
    kube_cluster.wait_for("the Deployment at zero", lambda: (kube_cluster.get("deployment.apps", "lazy", namespace)
                                                            or {}).get("spec", {}).get("replicas") == 0,
                          timeout=CONVERGE_S)
    kube_cluster.wait_for("the gateway to know the model", lambda: served in _models(gateway), timeout=30)
    assert _endpoints(gateway).get(served) == 0

    status, headers, reply = _exchange(gateway, "/v1/completions", {"model": served, "prompt": "Hello",
                                                                    "max_tokens": 1}, timeout=CONVERGE_S + 30)
    # By the answer, the request had waited for the new replica and been sent to it.
    assert kube_cluster.get("deployment.apps", "lazy", namespace)["spec"]["replicas"] == 1
    assert _ready_pods(kube_cluster, namespace, "lazy") == 1 and _endpoints(gateway)[served] == 1
    [pod] = kube_cluster.get("pods", namespace=namespace, selector=f"{OWNER_LABEL}=lazy")["items"]
    pod_url = f"http://{pod['status']['podIP']}:{PORT}"
    if status == 502:
        assert b"could be reached" in reply and pod_url in gateway.log_tail(), (reply, gateway.log_tail())
    else:
        assert headers[UPSTREAM_HEADER] == pod_url, (status, dict(headers), reply)
    stamps = kube_cluster.get(samples.PLURAL, "lazy", namespace)["metadata"]["annotations"]
    assert LAST_REQUEST_ANNOTATION in stamps
