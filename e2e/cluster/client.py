"""The handle tests get on a cluster, local or external: where it is, and
kubectl/helm bound to it.

Everything goes through the real kubectl and helm binaries, so the suite
exercises what a user runs and needs no Python Kubernetes client.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from . import build, kubeconfig, manifests

T = TypeVar("T")


class KubectlError(RuntimeError):
    """kubectl or helm exited non-zero; `stderr` holds the API's message."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        super().__init__(f"`{' '.join(argv)}` exited {returncode}: {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


@dataclass
class Cluster:
    """A reachable cluster with simulated GPU nodes and a bindable storage class."""

    kubeconfig: Path
    server: str
    #: Scratch space for kubeconfigs and logs made by helpers.
    workdir: Path
    #: Names of the simulated GPU nodes this package created.
    gpu_nodes: list[str] = field(default_factory=list)
    gpus_per_node: int = 0
    storage_class: str = manifests.STORAGE_CLASS
    #: True when given by KUBECONFIG rather than started here.
    external: bool = False

    @property
    def kubectl_path(self) -> Path:
        return build.binary("kubectl")

    @property
    def helm_path(self) -> Path:
        return build.binary("helm")

    @property
    def env(self) -> dict[str, str]:
        """Environment for a subprocess that should talk to this cluster
        (KUBECONFIG set, the pinned kubectl and helm first on PATH)."""
        tools = os.pathsep.join(sorted({str(self.kubectl_path.parent), str(self.helm_path.parent)}))
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig),
                "PATH": tools + os.pathsep + os.environ.get("PATH", "")}

    def _run(self, argv: list[str], stdin: str | None, check: bool, timeout: float) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False,
                              timeout=timeout, env=self.env)
        if check and done.returncode != 0:
            raise KubectlError(argv, done.returncode, done.stderr)
        return done

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True,
                timeout: float = 60, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Runs kubectl against this cluster (or with another identity's kubeconfig)."""
        argv = [str(self.kubectl_path), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        return self._run(argv, stdin, check, timeout)

    def helm(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Runs helm against this cluster."""
        argv = [str(self.helm_path), f"--kubeconfig={self.kubeconfig}", *args]
        return self._run(argv, None, check, timeout)

    def get(self, kind: str, name: str | None = None, namespace: str | None = None,
            selector: str | None = None) -> dict[str, Any] | None:
        """One object (None when absent) or, without `name`, a List
        (optionally filtered by a label selector)."""
        args = ["get", kind, *([name] if name else []), "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        if selector:
            args += ["-l", selector]
        done = self.kubectl(*args, check=False)
        if done.returncode != 0:
            if "NotFound" in done.stderr:
                return None
            raise KubectlError(args, done.returncode, done.stderr)
        return json.loads(done.stdout)

    def apply(self, *objects: dict[str, Any], namespace: str | None = None,
              server_side: bool = False) -> None:
        """Applies objects in one kubectl call; raises KubectlError with the
        API's refusal (e.g. a CEL rule's message)."""
        args = ["apply", "-f", "-"] + (["--server-side"] if server_side else [])
        if namespace:
            args += ["-n", namespace]
        self.kubectl(*args, stdin=json.dumps(manifests.as_list(list(objects))))

    def wait_for(self, what: str, condition: Callable[[], T | None], timeout: float = 60,
                 interval: float = 0.5) -> T:
        """Polls until `condition` returns a truthy value and returns it;
        fails after `timeout` seconds with `what` in the message."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(interval)

    def add_gpu_nodes(self, count: int, gpus: int, prefix: str = "gpu-node") -> list[str]:
        """Creates `count` more simulated GPU nodes and waits until they are Ready."""
        names = [f"{prefix}-{i}" for i in range(len(self.gpu_nodes), len(self.gpu_nodes) + count)]
        if not names:
            return names
        self.apply(*(manifests.gpu_node(name, gpus) for name in names))
        self.kubectl("wait", "--for=condition=Ready", "--timeout=60s", *(f"node/{n}" for n in names))
        self.gpu_nodes += names
        self.gpus_per_node = self.gpus_per_node or gpus
        return names

    def request_token(self, service_account: str, namespace: str, duration: str = "2h") -> str:
        """A bound ServiceAccount token from the TokenRequest API."""
        return self.kubectl("create", "token", service_account, "-n", namespace,
                            f"--duration={duration}").stdout.strip()

    def service_account_kubeconfig(self, service_account: str, namespace: str) -> Path:
        """A kubeconfig that authenticates as the ServiceAccount, so a local
        process is held to exactly that account's RBAC."""
        raw = json.loads(self.kubectl("config", "view", "--minify", "--raw", "-o", "json").stdout)
        path = self.workdir / f"sa-{namespace}-{service_account}.kubeconfig"
        return kubeconfig.write(path, raw["clusters"][0]["cluster"],
                                kubeconfig.token_user(self.request_token(service_account, namespace)),
                                namespace=namespace)
