"""The operator under test: the CRD installed, least-privilege RBAC from
`pagoda.operator.rbac`, and `pagoda operator` run as a local process
authenticated as a ServiceAccount bound to exactly those rules."""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.cluster.client import Cluster
from pagoda.operator import crd, rbac

REPO = Path(__file__).resolve().parents[3]
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
class Operator:
    """`pagoda operator` as a child process; killable and restartable like a pod."""

    cluster: Cluster
    kubeconfig: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    #: `pagoda operator` arguments; by default it watches the tests' namespaces.
    args: list[str] = field(default_factory=lambda: ["--namespace", WATCHED])
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        env = {**self.cluster.env, "KUBECONFIG": str(self.kubeconfig), "PYTHONPATH": str(REPO), **self.env}
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pagoda.cli", "operator", *self.args, "--log-format", "plain", "--liveness", ""],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as when the operator's node dies."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


def llm_deployment(name: str, **spec: Any) -> dict[str, Any]:
    """A small LLMDeployment; keyword arguments override top-level spec fields."""
    body: dict[str, Any] = {"model": {"source": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
                            "modelCache": {"size": "1Gi"}} | spec
    return {"apiVersion": "pagoda.dev/v1alpha1", "kind": "LLMDeployment", "metadata": {"name": name}, "spec": body}
