"""The operator under test: the CRD installed, least-privilege RBAC from
`pagoda.operator.rbac`, and `pagoda operator` run as a local process
authenticated as a ServiceAccount bound to exactly those rules."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.cluster.client import Cluster
from e2e.cluster.operator_process import OperatorChild
from pagoda.operator import crd, rbac

SYSTEM_NAMESPACE = "pagoda-it-system"
ACCOUNT = "pagoda-operator"
#: Namespaces the operator under test watches (a kopf glob pattern): tests
#: make theirs with this prefix, so operators of other suites never collide.
WATCHED = "pagoda-it-*"


def install_crd(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(crd.CRD_PATH))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    f"crd/{crd.build_crd()['metadata']['name']}")


def operator_kubeconfig(cluster: Cluster) -> Path:
    """A kubeconfig of a ServiceAccount holding only the operator's ClusterRole."""
    role = rbac.cluster_role("pagoda-it-operator")
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "pagoda-it-operator"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]},
               "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": SYSTEM_NAMESPACE}]}
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}}
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": ACCOUNT, "namespace": SYSTEM_NAMESPACE}}
    cluster.apply(namespace, account, role, binding)
    return cluster.service_account_kubeconfig(ACCOUNT, SYSTEM_NAMESPACE)


@dataclass
class Operator(OperatorChild):
    """`pagoda operator` as a child process; killable and restartable like a pod."""

    cluster: Cluster
    kubeconfig: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    #: `pagoda operator` arguments; by default it watches the tests' namespaces.
    args: list[str] = field(default_factory=lambda: ["--namespace", WATCHED])
    #: Where it serves its metrics; 0, none: replicas on one machine never contend for a port.
    metrics_port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        env = {**self.cluster.env, "KUBECONFIG": str(self.kubeconfig), **self.env}
        self.launch([*self.args, "--log-format", "plain", "--liveness", "", "--metrics-port", str(self.metrics_port)],
                    env)


def llm_deployment(name: str, **spec: Any) -> dict[str, Any]:
    """A small LLMDeployment; keyword arguments override top-level spec fields."""
    body: dict[str, Any] = {"model": {"source": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
                            "modelCache": {"size": "1Gi"}} | spec
    return {"apiVersion": "pagoda.dev/v1alpha1", "kind": "LLMDeployment", "metadata": {"name": name}, "spec": body}
