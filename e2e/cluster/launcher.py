"""Starts and stops the local control plane: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, KWOK and the volume provisioner,
all on loopback, with freshly generated PKI.

Start-up is a few seconds once the binaries are cached: etcd skips fsync
(its data dir is thrown away), and everything after the API server starts at
once and is awaited together.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pagoda.processes import free_port

from . import build, kubeconfig, manifests, pki, processes
from .client import Cluster
from .processes import Process

SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
ISSUER = "https://kubernetes.default.svc.cluster.local"
#: How often the HPA controller re-reads metrics (upstream: 15s), so that an
#: autoscaling scenario sees a scale decision within seconds.
HPA_SYNC_PERIOD = "3s"
STATE_FILE = "state.json"
REPO_ROOT = Path(__file__).resolve().parents[2]


class ClusterError(RuntimeError):
    """A component did not come up; the message carries the end of its log."""


@dataclass
class _Supervisor:
    """Runs the components of one cluster under `workdir/logs`.

    `detached` components survive the Python process (for `make cluster-up`);
    otherwise they die with it.
    """

    workdir: Path
    gpu_nodes: int = 3
    gpus_per_node: int = 4
    detached: bool = False
    processes: list[Process] = field(default_factory=list)

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    def stop(self) -> None:
        """Stops components in reverse start order (clients before the API
        server before etcd) and removes the state file."""
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        (self.workdir / STATE_FILE).unlink(missing_ok=True)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        self.logs.mkdir(parents=True, exist_ok=True)
        process = processes.start(name, argv, self.logs, detached=self.detached, env=env)
        self.processes.append(process)
        return process

    def _process(self, name: str) -> Process:
        return next(p for p in self.processes if p.name == name)

    def _await(self, process: Process, check: Callable[[], bool], deadline: float) -> None:
        """Waits for `check` while `process` lives; fails with its log tail."""
        ok = processes.wait_until(lambda: not process.alive() or check(), deadline - time.monotonic(), 0.2)
        if not ok or not process.alive():
            state = "exited" if not process.alive() else "did not become healthy in time"
            raise ClusterError(f"{process.name} {state}; last lines of {process.log}:\n{process.log_tail()}")

    def _simulate(self, cluster: Cluster, admin_config: Path, *, default_storage: bool) -> None:
        """Starts KWOK and the volume provisioner against `cluster`, then
        creates the storage class and the GPU nodes and waits for them."""
        self._spawn("kwok", [str(build.binary("kwok")), f"--kubeconfig={admin_config}",
                             f"--config={kwok_config(self.workdir)}", "--manage-all-nodes=false",
                             "--manage-nodes-with-annotation-selector={}={}".format(*manifests.KWOK_ANNOTATION),
                             "--node-lease-duration-seconds=40", f"--cidr={POD_CIDR}",
                             f"--server-address=127.0.0.1:{free_port()}"])
        self._spawn("provisioner", [sys.executable, "-m", "e2e.cluster.provisioner",
                                    f"--kubeconfig={admin_config}", f"--kubectl={build.binary('kubectl')}"],
                    env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        cluster.apply(manifests.storage_class(default=default_storage))
        cluster.add_gpu_nodes(self.gpu_nodes, self.gpus_per_node)

    def _write_state(self, cluster: Cluster) -> None:
        state = {"server": cluster.server, "kubeconfig": str(cluster.kubeconfig),
                 "gpu_nodes": cluster.gpu_nodes, "gpus_per_node": cluster.gpus_per_node,
                 "processes": [{"name": p.name, "pid": p.pid, "log": str(p.log)} for p in self.processes]}
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


@dataclass
class LocalCluster(_Supervisor):
    """A control plane of its own, every file of it under `workdir`."""

    def start(self, timeout: float = 90) -> Cluster:
        """Starts every component, waits until the cluster schedules onto
        Ready GPU nodes, and returns its handle; stops what it started on failure."""
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> Cluster:
        deadline = time.monotonic() + timeout
        certs = pki.generate(self.workdir / "pki")
        ports = {name: free_port() for name in ("etcd", "etcd-peer", "apiserver", "controller-manager",
                                                "scheduler")}
        server = f"https://127.0.0.1:{ports['apiserver']}"
        ca = kubeconfig.cluster_entry(server, certs.ca.cert)
        configs = {name: kubeconfig.write(self.workdir / f"{name}.kubeconfig", ca, kubeconfig.cert_user(pair))
                   for name, pair in certs.clients.items()}

        etcd = self._spawn("etcd", self._etcd_args(ports))
        self._await(etcd, lambda: http_ok(f"http://127.0.0.1:{ports['etcd']}/health"), deadline)
        apiserver = self._spawn("kube-apiserver", self._apiserver_args(ports, certs))
        self._await(apiserver, _https_probe(f"{server}/readyz", certs.ca.cert, certs.clients["admin"]), deadline)

        cluster = Cluster(configs["admin"], server, self.workdir)
        self._spawn("kube-controller-manager",
                    self._controller_manager_args(ports, certs, configs["controller-manager"]))
        self._spawn("kube-scheduler", self._scheduler_args(ports, configs["scheduler"]))
        self._simulate(cluster, configs["admin"], default_storage=True)
        for name in ("kube-controller-manager", "kube-scheduler"):
            port = ports[name.removeprefix("kube-")]
            self._await(self._process(name), _https_probe(f"https://127.0.0.1:{port}/healthz"), deadline)
        # Pods are refused until their namespace's `default` ServiceAccount
        # exists: its controller running is the last thing tests depend on.
        self._await(self._process("kube-controller-manager"),
                    lambda: cluster.get("serviceaccount", "default", "default") is not None, deadline)
        self._write_state(cluster)
        return cluster

    def _etcd_args(self, ports: dict[str, int]) -> list[str]:
        client, peer = f"http://127.0.0.1:{ports['etcd']}", f"http://127.0.0.1:{ports['etcd-peer']}"
        return [str(build.binary("etcd")), f"--data-dir={self.workdir / 'etcd'}", "--name=pagoda-e2e",
                f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=pagoda-e2e={peer}", "--unsafe-no-fsync=true",
                "--log-level=warn"]

    def _apiserver_args(self, ports: dict[str, int], certs: pki.ClusterPKI) -> list[str]:
        return [str(build.binary("kube-apiserver")),
                f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
                f"--secure-port={ports['apiserver']}",
                f"--tls-cert-file={certs.apiserver.cert}", f"--tls-private-key-file={certs.apiserver.key}",
                f"--client-ca-file={certs.ca.cert}",
                f"--service-account-issuer={ISSUER}",
                f"--service-account-key-file={certs.service_account_pub}",
                f"--service-account-signing-key-file={certs.service_account_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # Loopback may not back the `kubernetes` Service; nothing in a
                # simulated pod dials it, so its endpoints are not kept.
                "--endpoint-reconciler-type=none",
                # The aggregation layer, for extension API servers such as
                # prometheus-adapter: requests are proxied with the front-proxy
                # client certificate and the user in X-Remote-* headers.
                f"--requestheader-client-ca-file={certs.front_proxy_ca.cert}",
                f"--requestheader-allowed-names={pki.FRONT_PROXY_CLIENT}",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={certs.front_proxy_client.cert}",
                f"--proxy-client-key-file={certs.front_proxy_client.key}",
                # An APIService's Service is dialled by its ClusterIP or, for
                # an ExternalName Service, by that name. With no kube-proxy a
                # ClusterIP leads nowhere, and endpoint routing (=true) refuses
                # loopback endpoints, so a local extension server is reached
                # through an ExternalName Service naming localhost.
                "--enable-aggregator-routing=false",
                "--authorization-mode=RBAC", "--allow-privileged=true", "--profiling=false"]

    def _controller_manager_args(self, ports: dict[str, int], certs: pki.ClusterPKI, config: Path) -> list[str]:
        return [str(build.binary("kube-controller-manager")),
                f"--kubeconfig={config}", f"--authentication-kubeconfig={config}",
                f"--authorization-kubeconfig={config}",
                "--bind-address=127.0.0.1", f"--secure-port={ports['controller-manager']}",
                f"--cert-dir={self.workdir / 'pki' / 'controller-manager-serving'}",
                "--leader-elect=false", "--use-service-account-credentials=true",
                f"--service-account-private-key-file={certs.service_account_key}",
                f"--root-ca-file={certs.ca.cert}",
                f"--cluster-signing-cert-file={certs.ca.cert}", f"--cluster-signing-key-file={certs.ca.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}", f"--cluster-cidr={POD_CIDR}",
                f"--horizontal-pod-autoscaler-sync-period={HPA_SYNC_PERIOD}",
                "--cluster-name=pagoda-e2e", "--profiling=false"]

    def _scheduler_args(self, ports: dict[str, int], config: Path) -> list[str]:
        return [str(build.binary("kube-scheduler")),
                f"--kubeconfig={config}", f"--authentication-kubeconfig={config}",
                f"--authorization-kubeconfig={config}",
                "--bind-address=127.0.0.1", f"--secure-port={ports['scheduler']}",
                f"--cert-dir={self.workdir / 'pki' / 'scheduler-serving'}",
                "--leader-elect=false", "--profiling=false"]


@dataclass
class ExternalCluster(_Supervisor):
    """A cluster given by a kubeconfig (kind, a cloud's): KWOK and the
    provisioner run here against it and manage only the nodes and volumes
    this package creates, which `stop` deletes again."""

    connected: Cluster | None = None

    def start(self, source: Path) -> Cluster:
        """Connects through `source` (a kubeconfig) and adds the simulated GPU nodes."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "external.kubeconfig"
        probe = Cluster(source, "", self.workdir)
        # One flattened file: KUBECONFIG may list several, the tools take one.
        config.write_text(probe.kubectl("config", "view", "--flatten", "--minify", "-o", "json").stdout)
        config.chmod(0o600)
        server = json.loads(config.read_text())["clusters"][0]["cluster"]["server"]
        cluster = Cluster(config, server, self.workdir, external=True)
        self.connected = cluster
        try:
            self._simulate(cluster, config, default_storage=False)
        except BaseException:
            self.stop()
            raise
        return cluster

    def stop(self) -> None:
        if self.connected is not None:
            cluster = self.connected
            cluster.kubectl("delete", "node", "-l", "=".join(manifests.NODE_LABEL),
                            "--ignore-not-found", check=False)
            cluster.kubectl("delete", "storageclass", manifests.STORAGE_CLASS, "--ignore-not-found", check=False)
            self.connected = None
        super().stop()


def kwok_config(workdir: Path) -> Path:
    """KWOK's configuration: the upstream stages (node init and lease
    heartbeat, pod ready/complete/delete) saved by the build, as one file."""
    stages_dir = build.built_component("kwok").directory / "stages"
    path = workdir / "kwok.yaml"
    path.write_text("\n---\n".join(p.read_text().strip() for p in sorted(stages_dir.glob("*.yaml"))) + "\n")
    return path


def stop_detached(workdir: Path) -> bool:
    """Stops a cluster started with `detached=True` from its state file;
    returns False when none was running there."""
    state_file = workdir / STATE_FILE
    if not state_file.exists():
        return False
    state = json.loads(state_file.read_text())
    for entry in reversed(state["processes"]):
        if processes.runs(entry["pid"], entry["name"]):
            processes.terminate_pid(entry["pid"])
    state_file.unlink()
    shutil.rmtree(workdir / "etcd", ignore_errors=True)
    return True


def read_state(workdir: Path) -> dict | None:
    """The state of a detached cluster, or None when none runs there."""
    state_file = workdir / STATE_FILE
    if not state_file.exists():
        return None
    state = json.loads(state_file.read_text())
    return state if all(processes.runs(p["pid"], p["name"]) for p in state["processes"]) else None


def http_ok(url: str) -> bool:
    """Whether a plain-HTTP health or readiness endpoint answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _https_probe(url: str, ca: Path | None = None, client: pki.KeyPair | None = None) -> Callable[[], bool]:
    """A probe of `url`: verified against `ca` with a client certificate, or,
    for the controllers' self-signed health endpoints, unverified."""
    context = ssl.create_default_context(cafile=str(ca)) if ca else ssl._create_unverified_context()
    if client:
        context.load_cert_chain(str(client.cert), str(client.key))

    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    return probe
