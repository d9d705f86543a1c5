"""prometheus-adapter (built by build.py) serving the custom metrics API
`custom.metrics.k8s.io/v1beta1` of the local cluster from a real Prometheus,
with whatever rules it is given: the HPA controller then reads per-pod
metrics exactly as it does in a real cluster.

The adapter runs here as a process on loopback under a ServiceAccount of its
own, with the RBAC its upstream manifests give it (delegated authentication
and authorization, reading pods and namespaces). The API server reaches it
through the aggregation layer the launcher configures: an APIService whose
ExternalName Service names localhost, and whose caBundle trusts the serving
certificate made here for the name the aggregator checks
(`<service>.<namespace>.svc`).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import build, pki, processes
from .client import Cluster
from .launcher import ClusterError, free_port
from .processes import Process

NAME = "prometheus-adapter"
NAMESPACE = "custom-metrics"
GROUP, VERSION = "custom.metrics.k8s.io", "v1beta1"
API_SERVICE = f"{VERSION}.{GROUP}"
#: On every object made here, so that `stop` finds them all again.
LABEL = ("pagoda.dev/e2e-component", NAME)
#: How often the adapter re-lists the series its rules select; a new pod's
#: series is served after at most this long.
RELIST_INTERVAL = "2s"


def objects(ca_bundle: bytes, port: int) -> list[dict[str, Any]]:
    """The adapter's namespace, identity, RBAC, Service and APIService."""
    labels = {LABEL[0]: LABEL[1]}
    subject = [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]

    def meta(name: str, namespace: str | None = None) -> dict[str, Any]:
        return {"name": name, "labels": labels, **({"namespace": namespace} if namespace else {})}

    def binding(kind: str, name: str, role_kind: str, role: str, namespace: str | None = None) -> dict[str, Any]:
        return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta(name, namespace),
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
                "subjects": subject}

    reader = f"pagoda-e2e:{NAME}:resource-reader"
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": meta(NAMESPACE)},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(NAME, NAMESPACE)},
        # Delegated authentication and authorization of the aggregator's requests.
        binding("ClusterRoleBinding", f"pagoda-e2e:{NAME}:auth-delegator", "ClusterRole", "system:auth-delegator"),
        binding("RoleBinding", f"pagoda-e2e:{NAME}:auth-reader", "Role", "extension-apiserver-authentication-reader",
                "kube-system"),
        # The pods of a `pods/*` request are listed by label selector.
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta(reader),
         "rules": [{"apiGroups": [""], "resources": ["namespaces", "pods"], "verbs": ["get", "list", "watch"]}]},
        binding("ClusterRoleBinding", reader, "ClusterRole", reader),
        {"apiVersion": "v1", "kind": "Service", "metadata": meta(NAME, NAMESPACE),
         "spec": {"type": "ExternalName", "externalName": "localhost"}},
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": meta(API_SERVICE),
         "spec": {"group": GROUP, "version": VERSION, "groupPriorityMinimum": 100, "versionPriority": 100,
                  "service": {"namespace": NAMESPACE, "name": NAME, "port": port},
                  "caBundle": base64.b64encode(ca_bundle).decode()}},
    ]


@dataclass
class PrometheusAdapter:
    """One adapter serving the custom metrics API of `cluster` from
    `prometheus_url` with the adapter configuration `config` (its YAML)."""

    cluster: Cluster
    workdir: Path
    prometheus_url: str
    config: str
    process: Process | None = field(default=None, init=False)

    def start(self, timeout: float = 60) -> None:
        """Registers the APIService and waits until the aggregator finds it
        Available (its discovery answered through the API server); removes
        what it made on failure."""
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ca, serving = pki.serving_certificate(self.workdir / "pki", NAME, [f"{NAME}.{NAMESPACE}.svc"])
        port = free_port()
        self.cluster.apply(*objects(ca.cert.read_bytes(), port))
        identity = self.cluster.service_account_kubeconfig(NAME, NAMESPACE)
        (self.workdir / "config.yaml").write_text(self.config)
        self.process = processes.start(NAME, [
            str(build.binary(NAME)), "--bind-address=127.0.0.1", f"--secure-port={port}",
            f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
            *(f"--{use}-kubeconfig={identity}" for use in ("lister", "authentication", "authorization")),
            f"--prometheus-url={self.prometheus_url}", f"--config={self.workdir / 'config.yaml'}",
            f"--metrics-relist-interval={RELIST_INTERVAL}"], self.workdir)
        deadline = time.monotonic() + timeout
        while not self._available():
            if not self.process.alive() or time.monotonic() > deadline:
                state = "exited" if not self.process.alive() else f"not Available after {timeout:.0f}s"
                raise ClusterError(f"{NAME} {state}; {self._condition()}; last lines of "
                                   f"{self.process.log}:\n{self.process.log_tail()}")
            time.sleep(0.5)

    def _condition(self) -> dict[str, Any]:
        found = self.cluster.get("apiservice", API_SERVICE) or {}
        return next((c for c in found.get("status", {}).get("conditions", []) if c["type"] == "Available"), {})

    def _available(self) -> bool:
        return self._condition().get("status") == "True"

    def stop(self) -> None:
        """Unregisters the APIService first (an unavailable one would fail
        every later discovery of the cluster), then stops the adapter and
        deletes the rest."""
        selector = "=".join(LABEL)
        self.cluster.kubectl("delete", "apiservice", "-l", selector, "--ignore-not-found", check=False)
        if self.process is not None:
            self.process.stop()
            self.process = None
        self.cluster.kubectl("delete", "clusterrolebinding,clusterrole", "-l", selector, "--ignore-not-found",
                             check=False)
        self.cluster.kubectl("delete", "rolebinding", "-n", "kube-system", "-l", selector, "--ignore-not-found",
                             check=False)
        self.cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false", check=False)
