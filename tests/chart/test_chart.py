"""helm lint and helm template of charts/pagoda; what it renders is valid and
agrees with the operator's own single sources."""

from __future__ import annotations

import argparse
import dataclasses
import filecmp
import json
from typing import Any

import pytest
import yaml

from e2e.stack import GATEWAY, OPERATOR
from pagoda.operator import cli, rbac
from pagoda.operator.config import OperatorConfig
from pagoda.operator.gateway import balancer
from pagoda.operator.gateway import cli as gateway_cli
from tests.operator.kube_schemas import validate

from .helm import ALL_ON, CHART, NAMESPACE, REPO, helm, of_component, one, render, value_args

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
    {"gateway": {"replicas": 3, "image": {"repository": "registry.local/gw", "tag": "dev", "pullPolicy": "Always"},
                 "service": {"type": "LoadBalancer", "port": 8080}, "port": 9000, "routing": "least-load",
                 "loadFactor": 1.5, "prefixChars": 200, "endpointWaitSeconds": 2.5, "maxAttempts": 2,
                 "logLevel": "debug", "podAnnotations": {"a": "b"}, "nodeSelector": {"pool": "cpu"},
                 "tolerations": [{"key": "k", "operator": "Exists"}], "priorityClassName": "high"}},
    {"gateway": {"enabled": False}},
], ids=["defaults", "all-on", "customised", "named-namespaces", "replicas", "gateway-customised", "no-gateway"])
def test_rendered_objects_are_valid_kubernetes_objects(values: dict | None) -> None:
    objects = render(values)
    assert objects
    for obj in objects:
        if obj["apiVersion"] not in _CUSTOM:
            validate(obj)
    assert {o["kind"] for o in objects} >= {"CustomResourceDefinition", "ServiceAccount", "ClusterRole",
                                            "ClusterRoleBinding", "ConfigMap", "Deployment"}


def test_optional_objects_follow_their_switches() -> None:
    objects = render()
    kinds = [o["kind"] for o in objects]
    assert not {"PodMonitor", "ServiceMonitor"} & set(kinds) and kinds.count("ConfigMap") == 1
    assert [o for o in objects if o["kind"] == "Service"] == [one(objects, "Service", GATEWAY)]
    assert not of_component(render({"gateway": {"enabled": False}}), GATEWAY)
    objects = render(ALL_ON)
    names = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
    assert names == {"pagoda-operator", "pagoda-dashboard-engine", "pagoda-dashboard-fleet", "pagoda-dashboard-gateway",
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


def _rendered_roles(component: str, watch: list[str]) -> list[tuple[str, str | None, list[str]]]:
    return _roles(of_component(render({"operator": {"watchNamespaces": watch}}), component))


#: watchNamespaces: every namespace, or glob patterns among them.
CLUSTER_WIDE = [[], ["team-*"], ["team-a", "ml-*"], ["team-?"]]


@pytest.mark.parametrize("watch", CLUSTER_WIDE, ids=lambda w: ",".join(w) or "all")
def test_cluster_role_grants_exactly_the_operators_rules(watch: list[str]) -> None:
    rendered = _rendered_roles(OPERATOR, watch)
    expected = rbac.cluster_role()
    assert rendered == _roles([expected]), \
        "templates/rbac.yaml must list pagoda.operator.rbac.RULES:\n" + yaml.safe_dump(expected["rules"])


def test_named_namespaces_get_roles_and_a_cluster_role_of_the_cluster_scoped_rules() -> None:
    watch = ["team-a", "team-b"]
    rendered = _rendered_roles(OPERATOR, watch)
    expected = rbac.namespaced_roles(watch)
    assert rendered == _roles(expected), \
        "templates/rbac.yaml must split pagoda.operator.rbac.RULES by scope:\n" + yaml.safe_dump_all(expected)


@pytest.mark.parametrize("watch", CLUSTER_WIDE, ids=lambda w: ",".join(w) or "all")
def test_gateway_watching_every_namespace_gets_a_cluster_role_of_its_rules(watch: list[str]) -> None:
    expected = rbac.gateway_cluster_role()
    assert _rendered_roles(GATEWAY, watch) == _roles([expected]), \
        "templates/gateway-rbac.yaml must list pagoda.operator.rbac.GATEWAY_RULES:\n" + yaml.safe_dump(expected["rules"])


def test_gateway_of_named_namespaces_gets_a_role_in_each_and_nothing_cluster_wide() -> None:
    watch = ["team-a", "team-b"]
    expected = rbac.gateway_roles(watch)
    assert _rendered_roles(GATEWAY, watch) == _roles(expected), \
        "templates/gateway-rbac.yaml must grant pagoda.operator.rbac.GATEWAY_RULES in each namespace:\n" \
        + yaml.safe_dump_all(expected)


@pytest.mark.parametrize("component,watch,binding_namespaces", [
    (OPERATOR, [], [""]), (OPERATOR, ["team-a", "team-b"], ["", "team-a", "team-b"]),
    (GATEWAY, [], [""]), (GATEWAY, ["team-a", "team-b"], ["team-a", "team-b"]), (GATEWAY, ["team-a", "ml-*"], [""]),
], ids=["operator-all", "operator-named", "gateway-all", "gateway-named", "gateway-glob"])
def test_bindings_name_the_components_service_account_and_role(component: str, watch: list[str],
                                                               binding_namespaces: list[str]) -> None:
    objects = of_component(render({"operator": {"watchNamespaces": watch}}), component)
    account = one(objects, "ServiceAccount")["metadata"]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["name"] and account["namespace"] == NAMESPACE
    bindings = [o for o in objects if o["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    assert sorted(b["metadata"].get("namespace", "") for b in bindings) == binding_namespaces
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects
             if o["kind"] in ("ClusterRole", "Role")}
    for binding in bindings:
        [subject] = binding["subjects"]
        assert (subject["kind"], subject["name"], subject["namespace"]) == ("ServiceAccount", account["name"], NAMESPACE)
        ref = binding["roleRef"]
        assert (ref["kind"], binding["metadata"].get("namespace"), ref["name"]) in roles


def test_operator_service_monitor_scrapes_the_operators_metrics_port() -> None:
    values = {**ALL_ON, "operator": {"metricsPort": 9102}}
    objects = of_component(render(values), OPERATOR)
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
    container = _container(render({"operator": {"metricsPort": 0}}))
    assert "--metrics-port=0" in container["args"] and [p["name"] for p in container["ports"]] == ["health"]
    refused = helm("template", "pagoda", str(CHART), *value_args({**ALL_ON, "operator": {"metricsPort": 0}}),
                   check=False)
    assert refused.returncode != 0 and "needs operator.metricsPort" in refused.stderr


def _container(objects: list[dict[str, Any]], component: str = OPERATOR) -> dict[str, Any]:
    [container] = one(objects, "Deployment", component)["spec"]["template"]["spec"]["containers"]
    return container


def test_one_replica_runs_standalone() -> None:
    objects = render()
    deployment = one(objects, "Deployment", OPERATOR)["spec"]
    assert deployment["replicas"] == 1 and deployment["strategy"] == {"type": "Recreate"}
    assert not [a for a in _container(objects)["args"] if a.startswith("--peering")]
    assert not [o for o in objects if o["apiVersion"] == "kopf.dev/v1"]


@pytest.mark.parametrize("watch", [[], ["team-a", "team-b"]], ids=["all", "named"])
def test_replicas_peer_through_the_objects_the_chart_creates(watch: list[str]) -> None:
    """kopf pauses a peered replica until it finds its peering object: one
    cluster-wide for an operator of every namespace, else one per namespace."""
    objects = render({"operator": {"replicas": 2, "watchNamespaces": watch, "peeringLifetimeSeconds": 15}})
    deployment = one(objects, "Deployment", OPERATOR)["spec"]
    assert deployment["replicas"] == 2 and deployment["strategy"]["type"] == "RollingUpdate"
    container = _container(objects)
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
    container = _container(render(values))
    assert [*container["command"], *container["args"]] == [
        "pagoda", "operator", "--liveness=http://0.0.0.0:8080/healthz", f"--metrics-port={cli.METRICS_PORT}",
        "--log-format=plain", "--verbose", "--namespace=team-a", "--namespace=ml-*"]


def _gateway_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    gateway_cli.add_cli(parser.add_subparsers())
    return parser


#: gateway values -> the `pagoda gateway` option each sets.
GATEWAY_OPTIONS = {"port": "port", "routing": "routing", "loadFactor": "load_factor", "prefixChars": "prefix_chars",
                   "sessionHeader": "session_header",
                   "endpointWaitSeconds": "endpoint_wait", "activationWaitSeconds": "activation_wait",
                   "activityIntervalSeconds": "activity_interval", "engineLoadIntervalSeconds": "engine_load_interval",
                   "maxAttempts": "max_attempts",
                   "logLevel": "log_level"}
#: Options the chart sets otherwise: the namespaces follow operator.watchNamespaces,
#: the pod listens on every address, and static backends are for outside Kubernetes.
_NOT_VALUES = {"func", "namespaces", "host", "backends"}


def test_gateway_value_defaults_are_the_gateways() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["gateway"]
    defaults = _gateway_parser().parse_args(["gateway"])
    assert set(vars(defaults)) - _NOT_VALUES == set(GATEWAY_OPTIONS.values()), "an option of pagoda gateway with no value"
    # An empty sessionHeader is the gateway's None: no header.
    assert {key: values[key] or None for key in GATEWAY_OPTIONS} == \
        {key: getattr(defaults, option) for key, option in GATEWAY_OPTIONS.items()}


def test_gateway_schema_offers_the_gateways_choices() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["gateway"]["properties"]
    assert tuple(schema["routing"]["enum"]) == balancer.STRATEGIES
    for level in schema["logLevel"]["enum"]:
        assert _gateway_parser().parse_args(["gateway", f"--log-level={level}"]).log_level == level


GATEWAY_VALUES = {"port": 9000, "routing": "least-load", "loadFactor": 1.5, "prefixChars": 200,
                  "sessionHeader": "x-user-id",
                  "endpointWaitSeconds": 2.5, "activationWaitSeconds": 300, "activityIntervalSeconds": 5,
                  "engineLoadIntervalSeconds": 0.5,
                  "maxAttempts": 2, "logLevel": "debug"}


@pytest.mark.parametrize("watch,namespaces", [([], None), (["team-a", "ml-*"], None), (["team-a", "team-b"],
                                                                                       ["team-a", "team-b"])],
                         ids=["all", "glob", "named"])
def test_gateway_runs_with_its_values_in_the_operators_namespaces(watch: list[str], namespaces: list[str] | None) -> None:
    """Glob patterns, which the gateway cannot follow, make it watch every namespace."""
    objects = render({"gateway": GATEWAY_VALUES, "operator": {"watchNamespaces": watch}})
    container = _container(objects, GATEWAY)
    assert container["command"] == ["pagoda"]
    args = _gateway_parser().parse_args(container["args"])
    assert {key: getattr(args, option) for key, option in GATEWAY_OPTIONS.items()} == GATEWAY_VALUES
    assert args.namespaces == namespaces and args.backends is None
    assert container["ports"] == [{"name": "http", "containerPort": 9000, "protocol": "TCP"}]


def test_gateway_pod_is_probed_and_locked_down_like_the_operators() -> None:
    objects = render({"operator": {"imagePullSecrets": ["regcred"]}})
    pods = {c: one(objects, "Deployment", c)["spec"]["template"]["spec"] for c in (OPERATOR, GATEWAY)}
    gateway, operator = _container(objects, GATEWAY), _container(objects, OPERATOR)
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert gateway["securityContext"] == operator["securityContext"]
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True
    assert gateway["securityContext"]["allowPrivilegeEscalation"] is False
    assert pods[GATEWAY]["securityContext"] == pods[OPERATOR]["securityContext"]
    assert pods[GATEWAY]["securityContext"]["runAsNonRoot"] is True
    assert pods[GATEWAY]["imagePullSecrets"] == pods[OPERATOR]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pods[GATEWAY]["serviceAccountName"] != pods[OPERATOR]["serviceAccountName"]


@pytest.mark.parametrize("image,expected", [
    ({}, "ghcr.io/pagoda-dev/pagoda-operator:{app}"),
    ({"tag": "dev"}, "ghcr.io/pagoda-dev/pagoda-operator:dev"),
    ({"repository": "registry.local/gateway"}, "registry.local/gateway:{app}"),
], ids=["operators", "own-tag", "own-repository"])
def test_gateway_image_defaults_to_the_operators(image: dict[str, str], expected: str) -> None:
    app = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    objects = render({"gateway": {"image": image}})
    assert _container(objects, GATEWAY)["image"] == expected.format(app=app)
    assert _container(objects, GATEWAY)["imagePullPolicy"] == _container(objects, OPERATOR)["imagePullPolicy"]


def test_gateway_service_reaches_the_gateway_pods_only() -> None:
    objects = render({**ALL_ON, "gateway": {"service": {"type": "NodePort", "port": 8080}}})
    service = one(objects, "Service", GATEWAY)
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    pod_labels = {c: one(objects, "Deployment", c)["spec"]["template"]["metadata"]["labels"] for c in (OPERATOR, GATEWAY)}
    services = {c: one(objects, "Service", c)["spec"]["selector"] for c in (OPERATOR, GATEWAY)}
    for component, selector in services.items():
        assert {c for c, labels in pod_labels.items() if selector.items() <= labels.items()} == {component}


def test_gateway_service_monitor_scrapes_the_gateways_service() -> None:
    objects = render(ALL_ON)
    service = one(objects, "Service", GATEWAY)
    monitor = one(objects, "ServiceMonitor", GATEWAY)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= one(objects, "Service", OPERATOR)["metadata"][
        "labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("http", "/metrics")]
    refused = helm("template", "pagoda", str(CHART), *value_args({**ALL_ON, "gateway": {"enabled": False}}),
                   check=False)
    assert refused.returncode != 0 and "needs gateway.enabled" in refused.stderr
