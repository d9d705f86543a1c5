"""values.schema.json makes helm refuse bad values, naming the offending key."""

from __future__ import annotations

from typing import Any

import pytest

from .helm import CHART, RELEASE, helm, value_args

#: (values, the path helm's refusal names)
BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"operator": {"logLevel": "trace"}}, "/operator/logLevel"),
    ({"operator": {"logFormat": "xml"}}, "/operator/logFormat"),
    ({"operator": {"watchNamespaces": "team-a"}}, "/operator/watchNamespaces"),
    ({"operator": {"watchNamespaces": ["Team_A"]}}, "/operator/watchNamespaces/0"),
    ({"operator": {"image": {"repository": "", "tag": "x"}}}, "/operator/image/repository"),
    ({"operator": {"image": {"repository": "r", "tag": "bad tag"}}}, "/operator/image/tag"),
    ({"operator": {"image": {"repository": "r", "pullPolicy": "Sometimes"}}}, "/operator/image/pullPolicy"),
    ({"operator": {"imagePullSecrets": [{"name": "regcred"}]}}, "/operator/imagePullSecrets/0"),
    ({"operator": {"replicas": 0}}, "/operator/replicas"),
    ({"operator": {"replicas": "2"}}, "/operator/replicas"),
    ({"operator": {"peeringLifetimeSeconds": 1}}, "/operator/peeringLifetimeSeconds"),
    ({"operator": {"leaderElection": True}}, "/operator"),
    ({"operator": {"metricsPort": -1}}, "/operator/metricsPort"),
    ({"operator": {"metricsPort": 70000}}, "/operator/metricsPort"),
    ({"operator": {"metricsPort": "8081"}}, "/operator/metricsPort"),
    ({"operator": {"metricsPort": 8080}}, "/operator/metricsPort"),  # kopf's liveness port
    ({"operator": {"resources": {"requests": {"cpu": 1}}}}, "/operator/resources/requests/cpu"),
    ({"config": {"resyncSeconds": 0}}, "/config/resyncSeconds"),
    ({"config": {"backoffSeconds": "5s"}}, "/config/backoffSeconds"),
    ({"config": {"runAsUser": 0}}, "/config/runAsUser"),
    ({"config": {"runAsUser": 1.5}}, "/config/runAsUser"),
    ({"config": {"defaultImage": "no-tag"}}, "/config/defaultImage"),
    ({"config": {"gpuResourceName": "nvidia.com/GPU!"}}, "/config/gpuResourceName"),
    ({"config": {"logLevel": "info"}}, "/config"),
    ({"serviceAccount": {"name": "Operator"}}, "/serviceAccount/name"),
    ({"monitoring": {"operatorServiceMonitor": {"enabled": "yes"}}}, "/monitoring/operatorServiceMonitor/enabled"),
    ({"monitoring": {"operatorServiceMonitor": {"interval": "30"}}}, "/monitoring/operatorServiceMonitor/interval"),
    ({"monitoring": {"operatorServiceMonitor": {"labels": {"release": 1}}}},
     "/monitoring/operatorServiceMonitor/labels/release"),
    ({"monitoring": {"podMonitor": {"enabled": "yes"}}}, "/monitoring/podMonitor/enabled"),
    ({"monitoring": {"podMonitor": {"interval": "15"}}}, "/monitoring/podMonitor/interval"),
    ({"monitoring": {"dashboards": {"label": ""}}}, "/monitoring/dashboards/label"),
    ({"monitoring": {"prometheusAdapter": {"namespace": "Monitoring"}}}, "/monitoring/prometheusAdapter/namespace"),
    ({"gateway": {"enabled": "yes"}}, "/gateway/enabled"),
    ({"gateway": {"replicas": 0}}, "/gateway/replicas"),
    ({"gateway": {"image": {"repository": "no spaces allowed"}}}, "/gateway/image/repository"),
    ({"gateway": {"image": {"tag": "bad tag"}}}, "/gateway/image/tag"),
    ({"gateway": {"image": {"pullPolicy": "Sometimes"}}}, "/gateway/image/pullPolicy"),
    ({"gateway": {"port": 0}}, "/gateway/port"),
    ({"gateway": {"service": {"port": 70000}}}, "/gateway/service/port"),
    ({"gateway": {"service": {"type": "ExternalName"}}}, "/gateway/service/type"),
    ({"gateway": {"routing": "random"}}, "/gateway/routing"),
    ({"gateway": {"loadFactor": 0.5}}, "/gateway/loadFactor"),
    ({"gateway": {"prefixChars": 0}}, "/gateway/prefixChars"),
    ({"gateway": {"endpointWaitSeconds": -1}}, "/gateway/endpointWaitSeconds"),
    ({"gateway": {"activationWaitSeconds": "10m"}}, "/gateway/activationWaitSeconds"),
    ({"gateway": {"activityIntervalSeconds": 0}}, "/gateway/activityIntervalSeconds"),
    ({"gateway": {"maxAttempts": 0}}, "/gateway/maxAttempts"),
    ({"gateway": {"logLevel": "trace"}}, "/gateway/logLevel"),
    ({"gateway": {"resources": {"limits": {"memory": 1}}}}, "/gateway/resources/limits/memory"),
    # It watches the operator's namespaces (operator.watchNamespaces).
    ({"gateway": {"watchNamespaces": ["team-a"]}}, "/gateway"),
    ({"monitoring": {"gatewayServiceMonitor": {"interval": "30"}}}, "/monitoring/gatewayServiceMonitor/interval"),
    ({"monitoring": {"serviceMonitor": {"enabled": True}}}, "/monitoring"),
    ({"rbac": {"create": False}}, "(root)"),
]


@pytest.mark.parametrize("values,path", BAD_VALUES, ids=[p for _, p in BAD_VALUES])
def test_bad_values_are_refused(values: dict[str, Any], path: str) -> None:
    result = helm("template", RELEASE, str(CHART), *value_args(values), check=False)
    assert result.returncode != 0, f"accepted {values}"
    assert "values don't meet the specifications of the schema" in result.stderr
    assert f"at '{path}'" in result.stderr or (path == "(root)" and "at ''" in result.stderr), result.stderr
