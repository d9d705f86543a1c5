"""The pagoda stack as the e2e suite drives it: the Helm release of
charts/pagoda, and the operator and the gateway run as local processes under
the release's ServiceAccounts.

No image registry is reachable here, so the chart's Deployments are scaled to
zero and each component runs from this checkout instead, with the
command-line arguments and environment the chart gives its container and a
token of the chart's ServiceAccount for it: the chart's RBAC is exactly what
each is allowed to do.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster.client import Cluster
from e2e.cluster.launcher import free_port
from e2e.cluster.operator_process import OperatorChild

REPO = Path(__file__).resolve().parents[1]
#: The chart under test; PAGODA_E2E_CHART points at another copy (an
#: unpacked release, a branch's) to run the same suite on it.
CHART = Path(os.environ.get("PAGODA_E2E_CHART") or REPO / "charts" / "pagoda").resolve()
#: The chart's components, by this label: each is also the `pagoda` subcommand its container runs.
COMPONENT_LABEL = "app.kubernetes.io/component"
OPERATOR, GATEWAY = "operator", "gateway"


@dataclass
class Release:
    """An installed release and what its manifest says about its components."""

    cluster: Cluster
    name: str
    namespace: str
    objects: list[dict[str, Any]]

    @classmethod
    def install(cls, cluster: Cluster, name: str = "pagoda", namespace: str = "pagoda-system",
                values: dict[str, Any] | None = None) -> Release:
        """`helm install` of the chart; once its CRDs are served, its
        Deployments are scaled to zero (no registry serves their image here)."""
        args = ["install", name, str(CHART), "-n", namespace, "--create-namespace", "--timeout=120s"]
        for key, value in (values or {}).items():
            args += ["--set-json", f"{key}={json.dumps(value)}"]
        cluster.helm(*args)
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        manifest = cluster.helm("get", "manifest", name, "-n", namespace).stdout
        release = cls(cluster, name, namespace, [o for o in yaml.safe_load_all(manifest) if o])
        cluster.kubectl("scale", *(f"deployment/{d['metadata']['name']}" for d in release.of_kind("Deployment")),
                        "--replicas=0", "-n", namespace)
        return release

    def uninstall(self) -> None:
        self.cluster.helm("uninstall", self.name, "-n", self.namespace, "--wait", check=False)

    def of_kind(self, kind: str, component: str | None = None) -> list[dict[str, Any]]:
        """The release's objects of `kind`, of `component` (OPERATOR, GATEWAY) when given."""
        return [o for o in self.objects if o.get("kind") == kind
                and component in (None, (o["metadata"].get("labels") or {}).get(COMPONENT_LABEL))]

    def _pod_spec(self, component: str) -> dict[str, Any]:
        [deployment] = self.of_kind("Deployment", component)
        return deployment["spec"]["template"]["spec"]

    def _container(self, component: str) -> dict[str, Any]:
        return self._pod_spec(component)["containers"][0]

    def service_account(self, component: str) -> str:
        return self._pod_spec(component)["serviceAccountName"]

    def args(self, component: str) -> list[str]:
        """What the component's container runs after `pagoda <component>`."""
        container = self._container(component)
        argv = [*container.get("command", []), *container.get("args", [])]
        return argv[argv.index(component) + 1:] if component in argv else []

    def operator_env(self) -> dict[str, str]:
        """The container's environment with ConfigMap references and the
        downward API resolved as the kubelet would."""
        env: dict[str, str] = {}
        container = self._container(OPERATOR)
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(self._config_map(source["configMapRef"]["name"]))
        field_values = {"metadata.namespace": self.namespace, "metadata.name": "pagoda-operator-e2e",
                        "spec.serviceAccountName": self.service_account(OPERATOR)}
        for var in container.get("env", []):
            ref = var.get("valueFrom", {})
            if "value" in var:
                env[var["name"]] = str(var["value"])
            elif "configMapKeyRef" in ref:
                env[var["name"]] = self._config_map(ref["configMapKeyRef"]["name"])[ref["configMapKeyRef"]["key"]]
            elif "fieldRef" in ref:
                env[var["name"]] = field_values[ref["fieldRef"]["fieldPath"]]
        return env

    def _config_map(self, name: str) -> dict[str, str]:
        return (self.cluster.get("configmap", name, self.namespace) or {}).get("data", {})


@dataclass
class OperatorProcess(OperatorChild):
    """`pagoda operator` from this checkout, authenticated as the release's
    ServiceAccount; killable and restartable like a pod."""

    release: Release
    log: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        cluster = self.release.cluster
        kubeconfig = cluster.service_account_kubeconfig(self.release.service_account(OPERATOR), self.release.namespace)
        env = {**cluster.env, **self.release.operator_env(), "KUBECONFIG": str(kubeconfig)}
        # A pod has a network namespace of its own; here the machine's is
        # shared with other runs, so the chart's metrics port becomes a free
        # one (the last --metrics-port given wins).
        self.launch([*self.release.args(OPERATOR), f"--metrics-port={free_port()}"], env)


@dataclass
class GatewayProcess(OperatorChild):
    """`pagoda gateway` from this checkout with the chart's arguments,
    authenticated as the release's gateway ServiceAccount, serving on
    loopback at `url`."""

    release: Release
    log: Path
    #: Replaces the chart's --port, for the same reason as the operator's metrics port.
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    subcommand = GATEWAY

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cluster = self.release.cluster
        kubeconfig = cluster.service_account_kubeconfig(self.release.service_account(GATEWAY), self.release.namespace)
        self.launch([*self.release.args(GATEWAY), "--host=127.0.0.1", f"--port={self.port}"],
                    {**cluster.env, "KUBECONFIG": str(kubeconfig)})
