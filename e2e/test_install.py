"""`helm install` of charts/pagoda: the CRD is served and the operator's
ServiceAccount has the verbs it needs, through the chart's RBAC only."""

from __future__ import annotations

import pytest

from e2e import samples
from e2e.cluster.client import Cluster
from e2e.stack import Release


def test_release_serves_the_crd(kube_cluster: Cluster, release: Release) -> None:
    crd = kube_cluster.get("crd", samples.PLURAL)
    assert crd is not None
    assert any(c["type"] == "Established" and c["status"] == "True" for c in crd["status"]["conditions"])
    status = kube_cluster.helm("status", release.name, "-n", release.namespace, "-o", "json").stdout
    assert '"status":"deployed"' in status.replace(" ", "")


@pytest.mark.parametrize("verb,resource", [
    ("watch", "llmdeployments.pagoda.dev"),
    ("patch", "llmdeployments.pagoda.dev/status"),
    ("create", "deployments.apps"),
    ("patch", "services"),
    ("create", "persistentvolumeclaims"),
    ("create", "horizontalpodautoscalers.autoscaling"),
    ("create", "events"),
    ("list", "pods"),
])
def test_operator_service_account_may(kube_cluster: Cluster, release: Release, verb: str, resource: str) -> None:
    account = f"system:serviceaccount:{release.namespace}:{release.service_account}"
    answer = kube_cluster.kubectl("auth", "can-i", verb, resource, "-A", f"--as={account}", check=False)
    assert answer.stdout.strip() == "yes", f"{account} may not {verb} {resource}"


def test_operator_service_account_may_not_read_secrets_everywhere(kube_cluster: Cluster, release: Release) -> None:
    account = f"system:serviceaccount:{release.namespace}:{release.service_account}"
    answer = kube_cluster.kubectl("auth", "can-i", "list", "secrets", "-A", f"--as={account}", check=False)
    assert answer.stdout.strip() == "no", "least privilege: the operator reads only the Secrets it is pointed at"
