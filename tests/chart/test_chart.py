"""helm lint and helm template of charts/pagoda; what it renders is valid and
agrees with the operator's own single sources."""

from __future__ import annotations

import dataclasses
import filecmp
import json
from typing import Any

import pytest
import yaml

from pagoda.operator import cli, rbac
from pagoda.operator.config import OperatorConfig
from tests.operator.kube_schemas import validate

from .helm import ALL_ON, CHART, NAMESPACE, REPO, helm, one, render, value_args

#: Kinds of prometheus-operator and kopf, whose schemas kubernetes-validate does not carry.
_CUSTOM = ("monitoring.coreos.com/v1", "kopf.dev/v1")


@pytest.mark.parametrize("values", [None, ALL_ON], ids=["defaults", "all-on"])
def test_lint_is_clean(values: dict | None) -> None:
    out = helm("lint", str(CHART), "--strict", *value_args(values)).stdout
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("values", [
    None, ALL_ON,
    {"operator": {"watchNamespaces": ["team-a", "ml-*"], "logLevel": "debug",
                  "imagePullSecrets": ["regcred"], "tolerations": [{"key": "k", "operator": "Exists"}]},
     "config": {"defaultImage": "registry.local/pagoda-engine:dev", "resyncSeconds": 30.5}},
    {"operator": {"watchNamespaces": ["team-a", "team-b"], "metricsPort": 0}},
    {"operator": {"replicas": 3, "watchNamespaces": ["team-a"]}},
], ids=["defaults", "all-on", "customised", "named-namespaces", "replicas"])
def test_rendered_objects_are_valid_kubernetes_objects(values: dict | None) -> None:
    objects = render(values)
    assert objects
    for obj in objects:
        if obj["apiVersion"] not in _CUSTOM:
            validate(obj)
    assert {o["kind"] for o in objects} >= {"CustomResourceDefinition", "ServiceAccount", "ClusterRole",
                                            "ClusterRoleBinding", "ConfigMap", "Deployment"}


def test_optional_objects_follow_their_switches() -> None:
    kinds = [o["kind"] for o in render()]
    assert not {"PodMonitor", "ServiceMonitor", "Service"} & set(kinds) and kinds.count("ConfigMap") == 1
    objects = render(ALL_ON)
    names = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
    assert names == {"pagoda-operator", "pagoda-dashboard-engine", "pagoda-dashboard-fleet",
                     "pagoda-prometheus-adapter"}
    dashboards = [o for o in objects if o["metadata"]["name"].startswith("pagoda-dashboard-")]
    assert all(d["metadata"]["labels"]["grafana_dashboard"] == "1" for d in dashboards)
    assert one(objects, "PodMonitor")["spec"]["namespaceSelector"] == {"any": True}


def test_chart_crds_are_the_projects() -> None:
    project, chart = REPO / "crds", CHART / "crds"
    names = sorted(p.name for p in project.glob("*.yaml"))
    assert names == sorted(p.name for p in chart.glob("*.yaml"))
    mismatch = [n for n in names if not filecmp.cmp(project / n, chart / n, shallow=False)]
    assert not mismatch, f"charts/pagoda/crds differs from crds/ ({mismatch}): run `make chart-crds`"


def _roles(objects: list[dict[str, Any]]) -> list[tuple[str, str | None, list[str]]]:
    """(kind, namespace, rules) of each role; rule order means nothing to RBAC."""
    return sorted((o["kind"], o["metadata"].get("namespace"), sorted(json.dumps(r, sort_keys=True) for r in o["rules"]))
                  for o in objects if o["kind"] in ("ClusterRole", "Role"))


#: watchNamespaces: every namespace, or glob patterns among them.
CLUSTER_WIDE = [[], ["team-*"], ["team-a", "ml-*"], ["team-?"]]


@pytest.mark.parametrize("watch", CLUSTER_WIDE, ids=lambda w: ",".join(w) or "all")
def test_cluster_role_grants_exactly_the_operators_rules(watch: list[str]) -> None:
    rendered = _roles(render({"operator": {"watchNamespaces": watch}}))
    expected = rbac.cluster_role()
    assert rendered == _roles([expected]), \
        "templates/rbac.yaml must list pagoda.operator.rbac.RULES:\n" + yaml.safe_dump(expected["rules"])


def test_named_namespaces_get_roles_and_a_cluster_role_of_the_cluster_scoped_rules() -> None:
    watch = ["team-a", "team-b"]
    rendered = _roles(render({"operator": {"watchNamespaces": watch}}))
    expected = rbac.namespaced_roles(watch)
    assert rendered == _roles(expected), \
        "templates/rbac.yaml must split pagoda.operator.rbac.RULES by scope:\n" + yaml.safe_dump_all(expected)


@pytest.mark.parametrize("watch", [[], ["team-a", "team-b"]], ids=["all", "named"])
def test_bindings_name_the_operators_service_account_and_role(watch: list[str]) -> None:
    objects = render({"operator": {"watchNamespaces": watch}})
    account = one(objects, "ServiceAccount")["metadata"]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["name"] and account["namespace"] == NAMESPACE
    bindings = [o for o in objects if o["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    assert sorted(b["metadata"].get("namespace", "") for b in bindings) == ["", *watch]
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects
             if o["kind"] in ("ClusterRole", "Role")}
    for binding in bindings:
        [subject] = binding["subjects"]
        assert (subject["kind"], subject["name"], subject["namespace"]) == ("ServiceAccount", account["name"], NAMESPACE)
        ref = binding["roleRef"]
        assert (ref["kind"], binding["metadata"].get("namespace"), ref["name"]) in roles


def test_operator_service_monitor_scrapes_the_operators_metrics_port() -> None:
    values = {**ALL_ON, "operator": {"metricsPort": 9102}}
    objects = render(values)
    [container] = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    [port] = [p for p in container["ports"] if p["name"] == "metrics"]
    assert port["containerPort"] == 9102 and "--metrics-port=9102" in container["args"]
    [service] = [o for o in objects if o["kind"] == "Service"]
    [service_port] = service["spec"]["ports"]
    assert service_port["targetPort"] == "metrics" and service_port["port"] == 9102
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = one(objects, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [(service_port["name"], "/metrics")]


def test_operator_metrics_can_be_turned_off() -> None:
    [container] = one(render({"operator": {"metricsPort": 0}}), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "--metrics-port=0" in container["args"] and [p["name"] for p in container["ports"]] == ["health"]
    refused = helm("template", "pagoda", str(CHART), *value_args({**ALL_ON, "operator": {"metricsPort": 0}}),
                   check=False)
    assert refused.returncode != 0 and "needs operator.metricsPort" in refused.stderr


def _operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    [container] = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def test_one_replica_runs_standalone() -> None:
    objects = render()
    deployment = one(objects, "Deployment")["spec"]
    assert deployment["replicas"] == 1 and deployment["strategy"] == {"type": "Recreate"}
    assert not [a for a in _operator_container(objects)["args"] if a.startswith("--peering")]
    assert not [o for o in objects if o["apiVersion"] == "kopf.dev/v1"]


@pytest.mark.parametrize("watch", [[], ["team-a", "team-b"]], ids=["all", "named"])
def test_replicas_peer_through_the_objects_the_chart_creates(watch: list[str]) -> None:
    """kopf pauses a peered replica until it finds its peering object: one
    cluster-wide for an operator of every namespace, else one per namespace."""
    objects = render({"operator": {"replicas": 2, "watchNamespaces": watch, "peeringLifetimeSeconds": 15}})
    deployment = one(objects, "Deployment")["spec"]
    assert deployment["replicas"] == 2 and deployment["strategy"]["type"] == "RollingUpdate"
    container = _operator_container(objects)
    [name] = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--peering=")]
    assert "--peering-lifetime=15" in container["args"] and "--priority" not in " ".join(container["args"])
    assert {"name": "POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]
    peerings = [(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace"))
                for o in objects if o["apiVersion"] == "kopf.dev/v1"]
    expected = [("KopfPeering", name, ns) for ns in watch] if watch else [("ClusterKopfPeering", name, None)]
    assert sorted(peerings) == expected


def test_replicas_refuse_glob_namespaces() -> None:
    refused = helm("template", "pagoda", str(CHART),
                   *value_args({"operator": {"replicas": 2, "watchNamespaces": ["team-*"]}}), check=False)
    assert refused.returncode != 0 and "operator.replicas > 1 needs operator.watchNamespaces" in refused.stderr


def test_peering_lifetime_default_is_the_operators() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["operator"]["peeringLifetimeSeconds"] == cli.PEERING_LIFETIME_S


def test_config_values_are_exactly_the_operators_settings() -> None:
    schema_keys = set(yaml.safe_load((CHART / "values.schema.json").read_text())["properties"]["config"]["properties"])
    camel = {f.name.split("_")[0] + "".join(w.title() for w in f.name.split("_")[1:])
             for f in dataclasses.fields(OperatorConfig)}
    assert schema_keys == camel


def test_operator_reads_the_rendered_settings() -> None:
    values = {"config": {"gpuResourceName": "amd.com/gpu", "resyncSeconds": 12.5, "runAsUser": 2000}}
    env = next(o for o in render(values) if o["kind"] == "ConfigMap")["data"]
    config = OperatorConfig.from_env(env)
    assert (config.gpu_resource_name, config.resync_seconds, config.run_as_user) == ("amd.com/gpu", 12.5, 2000)
    assert config.default_image.endswith(":" + yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])


def test_operator_arguments() -> None:
    values = {"operator": {"watchNamespaces": ["team-a", "ml-*"], "logLevel": "debug", "logFormat": "plain"}}
    [container] = one(render(values), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [*container["command"], *container["args"]] == [
        "pagoda", "operator", "--liveness=http://0.0.0.0:8080/healthz", f"--metrics-port={cli.METRICS_PORT}",
        "--log-format=plain", "--verbose", "--namespace=team-a", "--namespace=ml-*"]
