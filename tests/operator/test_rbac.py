"""The RBAC rules: valid, least privilege, each granted where it must hold."""

from __future__ import annotations

import pytest

from pagoda.operator import kube, rbac
from pagoda.operator.gateway import discovery
from pagoda.operator.rbac import Scope

from .kube_schemas import validate


def test_cluster_role_is_valid() -> None:
    validate(rbac.cluster_role())


def test_no_wildcards_and_secrets_are_never_listed() -> None:
    for rule in [*rbac.RULES, *rbac.GATEWAY_RULES]:
        assert "*" not in rule.resources and "*" not in rule.verbs and rule.why
        if "secrets" in rule.resources:
            assert rule.verbs == ["get"]


def _granted(rules: list[rbac.Rule]) -> set[str]:
    return {resource for rule in rules if rule.scope is Scope.NAMESPACE for resource in rule.resources}


def _gateway_watches() -> set[str]:
    return {kube.PLURALS[(api_version, kind)] for api_version, kind, _ in discovery.WATCHED}


def test_every_kind_the_operator_touches_is_granted_in_its_namespaces() -> None:
    """kube.PLURALS names the kinds of both: what only the gateway watches is the gateway's alone."""
    assert set(kube.PLURALS.values()) - _gateway_watches() <= _granted(rbac.RULES)


def test_the_gateway_may_list_and_watch_what_it_watches_and_write_only_stamps() -> None:
    assert _gateway_watches() == _granted(rbac.GATEWAY_RULES)
    writes = {resource: set(rule.verbs) - {"get", "list", "watch"} for rule in rbac.GATEWAY_RULES
              for resource in rule.resources}
    assert all({"list", "watch"} <= set(rule.verbs) for rule in rbac.GATEWAY_RULES)
    # Its one write: the last-request annotation of LLMDeployments that scale to zero.
    assert writes == {"llmdeployments": {"patch"}, "endpointslices": set()}
    assert "endpointslices" not in _granted(rbac.RULES), "the operator never reads EndpointSlices"


def test_gateway_cluster_role_holds_every_gateway_rule() -> None:
    role = rbac.gateway_cluster_role()
    validate(role)
    assert role["rules"] == [rule.policy_rule() for rule in rbac.GATEWAY_RULES]
    assert role["metadata"]["name"] != rbac.cluster_role()["metadata"]["name"]


def test_gateway_roles_are_one_per_named_namespace() -> None:
    roles = rbac.gateway_roles(["team-a", "team-b"])
    for role in roles:
        validate(role)
    assert [(r["kind"], r["metadata"]["namespace"]) for r in roles] == [("Role", "team-a"), ("Role", "team-b")]
    assert all(r["rules"] == rbac.gateway_cluster_role()["rules"] for r in roles)


def test_cluster_role_holds_every_rule() -> None:
    assert rbac.cluster_role()["rules"] == [rule.policy_rule() for rule in rbac.RULES]


@pytest.mark.parametrize("namespaces", [["team-a"], ["team-a", "team-b"]])
def test_namespaced_roles_split_the_rules_by_scope(namespaces: list[str]) -> None:
    cluster, *roles = rbac.namespaced_roles(namespaces)
    for obj in (cluster, *roles):
        validate(obj)
    assert cluster["kind"] == "ClusterRole" and "namespace" not in cluster["metadata"]
    assert [r["metadata"]["namespace"] for r in roles] == namespaces and {r["kind"] for r in roles} == {"Role"}
    by_scope = {scope: [r.policy_rule() for r in rbac.RULES if r.scope is scope] for scope in Scope}
    assert cluster["rules"] == by_scope[Scope.CLUSTER]
    assert all(role["rules"] == by_scope[Scope.NAMESPACE] for role in roles)
    # Peering across the whole cluster is granted to none of them.
    assert not any(rule in obj["rules"] for rule in by_scope[Scope.CLUSTERWIDE] for obj in (cluster, *roles))


def test_only_kopfs_discovery_is_cluster_wide_for_named_namespaces() -> None:
    """kopf 1.45 with `namespaces=` lists and watches Namespaces and CRDs
    (kopf._core.reactor.observation); nothing of ours is cluster-scoped."""
    cluster = {(rule.group, resource) for rule in rbac.RULES if rule.scope is Scope.CLUSTER
               for resource in rule.resources}
    assert cluster == {("", "namespaces"), ("apiextensions.k8s.io", "customresourcedefinitions")}
