"""`helm install` of charts/pagoda: the CRD is served and the operator's
ServiceAccount holds, through the chart's RBAC alone, every permission the
operator lists for itself (pagoda.operator.rbac) and no broader read of
Secrets; the gateway's holds its rules (rbac.GATEWAY_RULES) and nothing more."""

from __future__ import annotations

import json

import pytest

from pagoda.operator import rbac

from e2e import samples
from e2e.cluster.client import Cluster
from e2e.stack import GATEWAY, OPERATOR, Release


def _can(cluster: Cluster, release: Release, verb: str, resource: str, group: str = "",
         component: str = OPERATOR) -> bool:
    """Asks the API server's authorizer directly (a SubjectAccessReview) for
    `component`'s ServiceAccount: unlike `kubectl auth can-i`, it needs no
    discovery, so it also answers for resources whose CRD is absent here
    (ServiceMonitor)."""
    namespace, account = release.namespace, release.service_account(component)
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {
        "user": f"system:serviceaccount:{namespace}:{account}",
        "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
        "resourceAttributes": {"verb": verb, "group": group, "resource": resource.split("/")[0],
                               "subresource": resource.partition("/")[2]}}}
    answer = cluster.kubectl("create", "-o", "json", "-f", "-", stdin=json.dumps(review)).stdout
    return bool(json.loads(answer)["status"].get("allowed"))


def test_release_serves_the_crd(kube_cluster: Cluster, release: Release) -> None:
    crd = kube_cluster.get("crd", samples.PLURAL)
    assert crd is not None
    assert any(c["type"] == "Established" and c["status"] == "True" for c in crd["status"]["conditions"])
    status = kube_cluster.helm("status", release.name, "-n", release.namespace, "-o", "json").stdout
    assert '"status":"deployed"' in status.replace(" ", "")


@pytest.mark.parametrize("component,rules", [(OPERATOR, rbac.RULES), (GATEWAY, rbac.GATEWAY_RULES)])
def test_service_account_holds_every_rule_its_component_needs(kube_cluster: Cluster, release: Release,
                                                              component: str, rules: list[rbac.Rule]) -> None:
    missing = [
        f"{verb} {resource}{'.' + group if group else ''}"
        for group, resources, verbs, *_ in rules
        for resource in resources
        for verb in verbs
        if not _can(kube_cluster, release, verb, resource, group, component)
    ]
    assert missing == [], f"the chart's RBAC does not grant the {component}: {missing}"


def test_operator_service_account_may_not_list_secrets(kube_cluster: Cluster, release: Release) -> None:
    assert not _can(kube_cluster, release, "list", "secrets"), "least privilege: Secrets are only read by name"


def test_gateway_service_account_holds_nothing_more(kube_cluster: Cluster, release: Release) -> None:
    pagoda = samples.API_VERSION.split("/")[0]
    granted = [(verb, resource) for verb, resource, group in (
        ("create", "llmdeployments", pagoda), ("delete", "llmdeployments", pagoda),
        ("patch", "llmdeployments/status", pagoda), ("create", "endpointslices", "discovery.k8s.io"),
        ("list", "pods", ""), ("get", "secrets", ""), ("list", "services", ""))
        if _can(kube_cluster, release, verb, resource, group, GATEWAY)]
    assert granted == [], "least privilege: the gateway reads, and patches LLMDeployments' stamps, nothing else"
