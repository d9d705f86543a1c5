"""The chart's NOTES.txt as `helm install --dry-run` prints it (a real helm
against a real API server: helm renders NOTES only when installing): its
commands name the objects the chart renders and a namespace the operator
watches, the LLMDeployment it shows is one the cluster accepts, and the
gateway's address is its Service's."""

from __future__ import annotations

import re
import textwrap
from typing import Any

import pytest
import yaml

from e2e.cluster.client import Cluster
from e2e.cluster.pytest_plugin import kube_cluster  # noqa: F401
from e2e.stack import GATEWAY, OPERATOR
from pagoda.operator import flags

from . import llmdeployments
from .helm import CHART, NAMESPACE, RELEASE, one, render, value_args

_HEREDOC = re.compile(r"cat <<YAML \| kubectl apply(?P<flags>[^\n]*) -f -\n(?P<body>.*?)\n *YAML\n", re.S)


def notes(cluster: Cluster, values: dict[str, Any] | None = None) -> str:
    out = cluster.helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "--dry-run", *value_args(values)).stdout
    assert "\nNOTES:\n" in out, out[-2000:]
    return out.partition("\nNOTES:\n")[2]


def first_model(text: str) -> tuple[str, dict[str, Any]]:
    """(kubectl flags, object) of the LLMDeployment the notes apply."""
    match = _HEREDOC.search(text)
    assert match, text
    return match["flags"], yaml.safe_load(textwrap.dedent(match["body"]))


def operator_name(values: dict[str, Any] | None = None) -> str:
    return one(render(values), "Deployment", OPERATOR)["metadata"]["name"]


def test_defaults(kube_cluster: Cluster) -> None:  # noqa: F811
    text = notes(kube_cluster)
    assert "watching every namespace" in text
    assert f"kubectl -n {NAMESPACE} rollout status deployment/{operator_name()}\n" in text
    kubectl_flags, model = first_model(text)
    assert kubectl_flags == ""  # the current namespace: every one is watched
    llmdeployments.validate(model)
    name = model["metadata"]["name"]
    assert f"kubectl get llmdeployment {name} -w" in text
    assert f"kubectl port-forward service/{name} 8000:80" in text
    assert f'"model": "{model["spec"]["model"]["servedName"]}"' in text
    assert "prometheus-adapter" not in text


@pytest.mark.parametrize("watch,namespace", [(["ml-*", "team-a"], "team-a"), (["ml-*"], "NAMESPACE")])
def test_watched_namespaces(kube_cluster: Cluster, watch: list[str], namespace: str) -> None:  # noqa: F811
    text = notes(kube_cluster, {"operator": {"watchNamespaces": watch}})
    assert f"watching: {', '.join(watch)}." in text
    kubectl_flags, model = first_model(text)
    assert kubectl_flags == f" -n {namespace}"
    llmdeployments.validate(model)
    name = model["metadata"]["name"]
    assert f"kubectl -n {namespace} get llmdeployment {name} -w" in text
    assert f"kubectl -n {namespace} port-forward service/{name} 8000:80" in text
    assert (f"NAMESPACE being one matching {', '.join(watch)}" in text) == (namespace == "NAMESPACE")


def test_prometheus_adapter_and_operator_metrics(kube_cluster: Cluster) -> None:  # noqa: F811
    # No PodMonitor or ServiceMonitor: their CRDs are not installed here.
    values = {"monitoring": {"prometheusAdapter": {"enabled": True}}, "operator": {"metricsPort": 9102}}
    text = notes(kube_cluster, values)
    objects = render(values)
    [adapter] = [o["metadata"]["name"] for o in objects if o["metadata"]["name"].endswith("-prometheus-adapter")]
    assert f"rules.existing: {adapter}\n" in text
    assert f"pods/{flags.QUEUE_METRIC}" in text
    assert f"port-forward deployment/{operator_name(values)} 9102\n" in text
    assert "curl localhost:9102/metrics" in text
    llmdeployments.validate(first_model(text)[1])


def test_no_metrics_no_metrics_notes(kube_cluster: Cluster) -> None:  # noqa: F811
    assert "/metrics" not in notes(kube_cluster, {"operator": {"metricsPort": 0}})


@pytest.mark.parametrize("watch,routed", [([], "every namespace"), (["team-a", "ml-*"], "every namespace"),
                                          (["team-a", "team-b"], "team-a, team-b")], ids=["all", "glob", "named"])
def test_gateway(kube_cluster: Cluster, watch: list[str], routed: str) -> None:  # noqa: F811
    """Glob patterns, which the gateway cannot follow, make it route to every namespace."""
    values = {"operator": {"watchNamespaces": watch}}
    text = notes(kube_cluster, values)
    service = one(render(values), "Service", GATEWAY)
    name, [port] = service["metadata"]["name"], service["spec"]["ports"]
    assert f"to the LLMDeployments of {routed}:" in text
    assert f"kubectl -n {NAMESPACE} port-forward service/{name} 8000:{port['port']}\n" in text
    assert "curl localhost:8000/v1/models" in text and "http://localhost:8000/v1" in text
    assert f"http://{name}.{NAMESPACE}.svc.cluster.local/v1\n" in text  # port 80 goes unsaid


def test_gateway_on_another_port_or_none(kube_cluster: Cluster) -> None:  # noqa: F811
    values = {"gateway": {"service": {"port": 8080}}, "config": {"clusterDomain": "corp.internal"}}
    name = one(render(values), "Service", GATEWAY)["metadata"]["name"]
    text = notes(kube_cluster, values)
    assert f"port-forward service/{name} 8000:8080\n" in text
    assert f"http://{name}.{NAMESPACE}.svc.corp.internal:8080/v1\n" in text
    assert "gateway" not in notes(kube_cluster, {"gateway": {"enabled": False}})
