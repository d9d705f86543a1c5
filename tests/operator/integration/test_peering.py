"""More than one operator replica, as the chart runs them (`operator.replicas:
2`): identical pods, each drawing its own kopf peering priority, elect one
active replica through the peering object the chart creates, under the
chart's RBAC; when the active one goes, the other takes over."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.cluster.client import Cluster
from e2e.stack import OPERATOR, Release

from .stack import Operator, llm_deployment

SUFFIX = uuid.uuid4().hex[:8]
WATCHED = f"pagoda-peer-{SUFFIX}"
LIFETIME_S = 10


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[Release]:
    cluster.kubectl("create", "namespace", WATCHED)
    installed = Release.install(cluster, name="pagoda-peer", namespace=f"pagoda-peer-system-{SUFFIX}", values={
        "operator": {"replicas": 2, "peeringLifetimeSeconds": LIFETIME_S, "watchNamespaces": [WATCHED]}})
    # Operators discover resources once, at start: kopf.dev must be served by then.
    cluster.wait_for("kopf.dev in API discovery",
                     lambda: "kopfpeerings" in cluster.kubectl("api-resources", "--api-group=kopf.dev").stdout, timeout=60)
    yield installed
    installed.uninstall()
    for namespace in (WATCHED, installed.namespace):
        cluster.kubectl("delete", "namespace", namespace, "--wait=false")


def _peering_name(release: Release) -> str:
    [name] = [arg.split("=", 1)[1] for arg in release.args(OPERATOR) if arg.startswith("--peering=")]
    return name


def _log_has(operator: Operator, text: str) -> bool:
    return text in operator.log.read_text(errors="replace")


def _active(operator: Operator) -> bool:
    """Whether the replica's last peering transition resumed it. kopf starts
    a peered replica paused and logs only transitions: a replica that saw a
    higher-priority peer in its first view of the peering object never logs."""
    log = operator.log.read_text(errors="replace")
    return log.rfind("Resuming operations") > log.rfind("Pausing operations")


def _peer_priorities(release: Release) -> dict[str, int]:
    """Replica identity -> priority, as the replicas announce themselves in the peering object."""
    peering = release.cluster.get("kopfpeerings.kopf.dev", _peering_name(release), WATCHED) or {}
    return {identity: peer.get("priority", 0) for identity, peer in (peering.get("status") or {}).items()}


@pytest.mark.parametrize("leave", ["stop", "kill"])
def test_one_of_identical_replicas_reconciles_and_the_other_takes_over(
        cluster: Cluster, release: Release, tmp_path: Path, leave: str) -> None:
    """Exactly one replica reconciles. When it leaves, cleanly (a rolling
    update: it withdraws from the peering at once) or by a crash (its
    announcement runs out after the peering lifetime), the other resumes."""
    kubeconfig = cluster.service_account_kubeconfig(release.service_account(OPERATOR), release.namespace)

    def replica(pod: str) -> Operator:
        """A pod of the chart's Deployment: its arguments, settings and name (POD_ID from the downward API)."""
        return Operator(cluster, kubeconfig, tmp_path / f"{pod}.log", env={**release.operator_env(), "POD_ID": pod},
                        args=release.args(OPERATOR))

    replicas = {pod: replica(pod) for pod in ("operator-a", "operator-b")}
    replicas["operator-a"].start()
    try:
        cluster.wait_for("the first replica to resume", lambda: _active(replicas["operator-a"]), timeout=120)
        replicas["operator-b"].start()
        priorities = cluster.wait_for("both replicas in the peering object",
                                      lambda: len(found := _peer_priorities(release)) == 2 and found, timeout=120)
        assert set(priorities) == set(replicas) and len(set(priorities.values())) == 2
        leader_pod = max(priorities, key=priorities.__getitem__)
        leader = replicas[leader_pod]
        [standby] = [process for pod, process in replicas.items() if pod != leader_pod]
        cluster.wait_for("one active replica", lambda: _active(leader) and not _active(standby), timeout=60)

        cluster.apply(llm_deployment(f"first-{leave}"), namespace=WATCHED)
        cluster.wait_for("the active replica to handle it",
                         lambda: _log_has(leader, f"[{WATCHED}/first-{leave}] Creation is processed"), timeout=60)
        assert cluster.get("deployment.apps", f"first-{leave}", WATCHED)
        assert not _log_has(standby, f"[{WATCHED}/first-{leave}]") and not _active(standby)

        leader.stop() if leave == "stop" else leader.kill()
        cluster.wait_for("the standby replica to resume", lambda: _active(standby), timeout=LIFETIME_S + 60)
        cluster.apply(llm_deployment(f"second-{leave}"), namespace=WATCHED)
        cluster.wait_for("the standby replica to reconcile",
                         lambda: cluster.get("deployment.apps", f"second-{leave}", WATCHED), timeout=60)
        assert not _log_has(leader, f"[{WATCHED}/second-{leave}]")
    finally:
        for process in replicas.values():
            process.stop()
