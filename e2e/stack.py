"""The pagoda stack as the e2e suite drives it: the Helm release of
charts/pagoda, and the operator run as a local process under the release's
ServiceAccount.

No image registry is reachable here, so the chart's operator Deployment is
scaled to zero and the operator runs from this checkout instead, with the
command-line arguments and environment the chart gives its container and a
token of the chart's ServiceAccount: the chart's RBAC is exactly what the
operator is allowed to do.
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


@dataclass
class Release:
    """An installed release and what its manifest says about the operator."""

    cluster: Cluster
    name: str
    namespace: str
    objects: list[dict[str, Any]]

    @classmethod
    def install(cls, cluster: Cluster, name: str = "pagoda", namespace: str = "pagoda-system",
                values: dict[str, Any] | None = None) -> Release:
        """`helm install` of the chart; once its CRDs are served, the operator
        Deployment is scaled to zero (no registry serves its image here)."""
        args = ["install", name, str(CHART), "-n", namespace, "--create-namespace", "--timeout=120s"]
        for key, value in (values or {}).items():
            args += ["--set-json", f"{key}={json.dumps(value)}"]
        cluster.helm(*args)
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        manifest = cluster.helm("get", "manifest", name, "-n", namespace).stdout
        release = cls(cluster, name, namespace, [o for o in yaml.safe_load_all(manifest) if o])
        cluster.kubectl("scale", f"deployment/{release.operator_deployment['metadata']['name']}",
                        "--replicas=0", "-n", namespace)
        return release

    def uninstall(self) -> None:
        self.cluster.helm("uninstall", self.name, "-n", self.namespace, "--wait", check=False)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o.get("kind") == kind]

    @property
    def operator_deployment(self) -> dict[str, Any]:
        [deployment] = self.of_kind("Deployment")
        return deployment

    @property
    def operator_container(self) -> dict[str, Any]:
        return self.operator_deployment["spec"]["template"]["spec"]["containers"][0]

    @property
    def service_account(self) -> str:
        return self.operator_deployment["spec"]["template"]["spec"]["serviceAccountName"]

    def operator_args(self) -> list[str]:
        """What the container runs after `pagoda operator`."""
        argv = [*self.operator_container.get("command", []), *self.operator_container.get("args", [])]
        return argv[argv.index("operator") + 1:] if "operator" in argv else []

    def operator_env(self) -> dict[str, str]:
        """The container's environment with ConfigMap references and the
        downward API resolved as the kubelet would."""
        env: dict[str, str] = {}
        for source in self.operator_container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(self._config_map(source["configMapRef"]["name"]))
        field_values = {"metadata.namespace": self.namespace, "metadata.name": "pagoda-operator-e2e",
                        "spec.serviceAccountName": self.service_account}
        for var in self.operator_container.get("env", []):
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
        kubeconfig = cluster.service_account_kubeconfig(self.release.service_account, self.release.namespace)
        env = {**cluster.env, **self.release.operator_env(), "KUBECONFIG": str(kubeconfig)}
        # A pod has a network namespace of its own; here the machine's is
        # shared with other runs, so the chart's metrics port becomes a free
        # one (the last --metrics-port given wins).
        self.launch([*self.release.operator_args(), f"--metrics-port={free_port()}"], env)
