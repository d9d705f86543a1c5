"""The operator's least-privilege RBAC, listed once.

Each rule says why it exists and where it must hold (`Scope`). An operator
watching every namespace, or namespaces given by glob patterns, needs every
rule cluster-wide (`cluster_role`). One watching namespaces named exactly
needs only the `CLUSTER` rules cluster-wide and the `NAMESPACE` rules in each
of its namespaces (`namespaced_roles`). The Helm chart renders one or the
other and must grant exactly these (a chart test compares both renderings);
the integration tests run the operator under ServiceAccounts bound to
nothing else.

`pagoda gateway` reads, and stamps models in use: its `GATEWAY_RULES` hold in every namespace it
watches, in a ClusterRole when it watches them all (`gateway_cluster_role`;
it takes no glob patterns) or a Role in each one it names
(`gateway_roles`).

What kopf (1.45) does in each mode decides the scopes: `kopf.run` with
`namespaces=` still lists and watches Namespaces (to follow the watched ones
coming and going; `kopf._core.reactor.observation.namespace_observer`) and
CustomResourceDefinitions (`resource_observer`), and peers through
namespaced KopfPeerings; only `clusterwide=True` peers through
ClusterKopfPeerings, and it never lists Namespaces.

    python -m pagoda.operator.rbac            # prints the operator's ClusterRole
    python -m pagoda.operator.rbac gateway    # the gateway's
"""

from __future__ import annotations

import enum
import sys
from typing import Any, NamedTuple

import yaml

from . import v1alpha1
from .manifests import leaderworkerset, servicemonitor
from .manifests.meta import OWNER_LABEL

#: Creating through server-side apply needs both create and patch.
_APPLY = ["get", "list", "watch", "create", "patch"]
_API_VERSION = "rbac.authorization.k8s.io/v1"
_LABELS = {"app.kubernetes.io/part-of": "pagoda"}


class Scope(enum.Enum):
    """Where a rule must hold."""

    #: Objects in the watched namespaces: a Role in each when they are named exactly.
    NAMESPACE = "namespace"
    #: Cluster-scoped objects kopf reads whichever namespaces it watches.
    CLUSTER = "cluster"
    #: Cluster-scoped objects only an operator watching every namespace uses.
    CLUSTERWIDE = "clusterwide"


class Rule(NamedTuple):
    group: str
    resources: list[str]
    verbs: list[str]
    why: str
    scope: Scope = Scope.NAMESPACE

    def policy_rule(self) -> dict[str, Any]:
        return {"apiGroups": [self.group], "resources": list(self.resources), "verbs": list(self.verbs)}


RULES: list[Rule] = [
    Rule(v1alpha1.GROUP, [v1alpha1.PLURAL], ["get", "list", "watch", "patch"],
         "watch the resources; kopf keeps its bookkeeping in their annotations"),
    Rule(v1alpha1.GROUP, [f"{v1alpha1.PLURAL}/status"], ["get", "patch"], "report status"),
    Rule("apps", ["deployments"], [*_APPLY, "delete"],
         "the engine Deployment, removed when replicas come to span several machines"),
    Rule(leaderworkerset.API_VERSION.split("/")[0], ["leaderworkersets"], [*_APPLY, "delete"],
         f"the engine LeaderWorkerSet of replicas spanning several machines, where {leaderworkerset.PROJECT} is "
         "installed; removed when they fit one machine again"),
    Rule("", ["services", "persistentvolumeclaims"], _APPLY, "the Service and the model cache claim"),
    Rule("autoscaling", ["horizontalpodautoscalers"], [*_APPLY, "delete"], "the HPA, removed when autoscaling is off"),
    Rule("policy", ["poddisruptionbudgets"], _APPLY, "the PodDisruptionBudget"),
    Rule(servicemonitor.API_VERSION.split("/")[0], ["servicemonitors"], ["get", "create", "patch", "delete"],
         "the ServiceMonitor, where prometheus-operator is installed"),
    Rule("", ["pods"], ["get", "list", "watch"], "read why pods do not serve (status.conditions)"),
    Rule("", ["events"], ["list", "create", "patch"], "read pods' Warning events; post the resource's events"),
    Rule("", ["secrets"], ["get"], "check that the Secrets a resource names exist and hold their key (never list)"),
    Rule("kopf.dev", ["kopfpeerings"], ["get", "list", "watch", "patch"],
         "peering between operator replicas watching some namespaces (--peering)"),
    Rule("apiextensions.k8s.io", ["customresourcedefinitions"], ["list", "watch"], "kopf's resource discovery",
         Scope.CLUSTER),
    Rule("", ["namespaces"], ["list", "watch"], "kopf's namespace discovery when watching some namespaces",
         Scope.CLUSTER),
    Rule("kopf.dev", ["clusterkopfpeerings"], ["get", "list", "watch", "patch"],
         "peering between operator replicas watching every namespace (--peering)", Scope.CLUSTERWIDE),
]

#: `pagoda gateway`'s reads (gateway/discovery.py lists then watches both kinds) and its one write, all namespaced.
GATEWAY_RULES: list[Rule] = [
    Rule(v1alpha1.GROUP, [v1alpha1.PLURAL], ["get", "list", "watch", "patch"],
         "the model names each LLMDeployment serves (its servedName and adapters); patch: the last-request "
         "stamp of those that scale to zero (gateway/activity.py)"),
    Rule("discovery.k8s.io", ["endpointslices"], ["list", "watch"],
         f"the ready pods behind each LLMDeployment's Service (slices labelled {OWNER_LABEL})"),
]


def _role(kind: str, name: str, rules: list[Rule], namespace: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": dict(_LABELS)}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"apiVersion": _API_VERSION, "kind": kind, "metadata": metadata,
            "rules": [rule.policy_rule() for rule in rules]}


def cluster_role(name: str = "pagoda-operator") -> dict[str, Any]:
    """Every rule, cluster-wide: for an operator watching all namespaces or glob patterns."""
    return _role("ClusterRole", name, RULES)


def namespaced_roles(namespaces: list[str], name: str = "pagoda-operator") -> list[dict[str, Any]]:
    """For an operator watching exactly `namespaces`: a ClusterRole of the
    `CLUSTER` rules, then a Role of the `NAMESPACE` rules in each namespace."""
    return [_role("ClusterRole", name, [r for r in RULES if r.scope is Scope.CLUSTER]),
            *(_role("Role", name, [r for r in RULES if r.scope is Scope.NAMESPACE], ns) for ns in namespaces)]


def gateway_cluster_role(name: str = "pagoda-gateway") -> dict[str, Any]:
    """The gateway's rules cluster-wide: for a gateway watching every namespace,
    as it does when the operator's namespaces include glob patterns it cannot follow."""
    return _role("ClusterRole", name, GATEWAY_RULES)


def gateway_roles(namespaces: list[str], name: str = "pagoda-gateway") -> list[dict[str, Any]]:
    """For a gateway watching exactly `namespaces` (`-n` each): a Role in each, nothing cluster-wide."""
    return [_role("Role", name, GATEWAY_RULES, ns) for ns in namespaces]


if __name__ == "__main__":
    role = gateway_cluster_role() if sys.argv[1:] == ["gateway"] else cluster_role()
    sys.stdout.write(yaml.safe_dump(role, sort_keys=False))
