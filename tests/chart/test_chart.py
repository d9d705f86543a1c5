"""helm lint and helm template of charts/pagoda; what it renders is valid and
agrees with the operator's own single sources."""

from __future__ import annotations

import dataclasses
import filecmp

import pytest
import yaml

from pagoda.operator import rbac
from pagoda.operator.config import OperatorConfig
from tests.operator.kube_schemas import validate

from .helm import ALL_ON, CHART, NAMESPACE, REPO, helm, one, render, value_args

#: Kinds of prometheus-operator, whose schemas kubernetes-validate does not carry.
_MONITORING = "monitoring.coreos.com/v1"


@pytest.mark.parametrize("values", [None, ALL_ON], ids=["defaults", "all-on"])
def test_lint_is_clean(values: dict | None) -> None:
    out = helm("lint", str(CHART), "--strict", *value_args(values)).stdout
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("values", [
    None, ALL_ON,
    {"operator": {"watchNamespaces": ["team-a", "ml-*"], "logLevel": "debug",
                  "imagePullSecrets": ["regcred"], "tolerations": [{"key": "k", "operator": "Exists"}]},
     "config": {"defaultImage": "registry.local/pagoda-engine:dev", "resyncSeconds": 30.5}},
], ids=["defaults", "all-on", "customised"])
def test_rendered_objects_are_valid_kubernetes_objects(values: dict | None) -> None:
    objects = render(values)
    assert objects
    for obj in objects:
        if obj["apiVersion"] != _MONITORING:
            validate(obj)
    assert {o["kind"] for o in objects} >= {"CustomResourceDefinition", "ServiceAccount", "ClusterRole",
                                            "ClusterRoleBinding", "ConfigMap", "Deployment"}


def test_optional_objects_follow_their_switches() -> None:
    kinds = [o["kind"] for o in render()]
    assert "PodMonitor" not in kinds and kinds.count("ConfigMap") == 1
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


def test_cluster_role_grants_exactly_the_operators_rules() -> None:
    rendered = one(render(), "ClusterRole")["rules"]
    expected = rbac.cluster_role()["rules"]
    assert rendered == expected, "templates/rbac.yaml must list pagoda.operator.rbac.RULES:\n" + yaml.safe_dump(expected)


def test_binding_names_the_operators_service_account() -> None:
    objects = render()
    account = one(objects, "ServiceAccount")["metadata"]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    [subject] = one(objects, "ClusterRoleBinding")["subjects"]
    assert pod["serviceAccountName"] == account["name"] == subject["name"]
    assert subject["namespace"] == account["namespace"] == NAMESPACE


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
        "pagoda", "operator", "--liveness=http://0.0.0.0:8080/healthz", "--log-format=plain", "--verbose",
        "--namespace=team-a", "--namespace=ml-*"]
