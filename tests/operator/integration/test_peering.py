"""Several operator replicas: only the one of highest priority reconciles
(kopf peering); when it goes away, the next one takes over."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.cluster.client import Cluster
from pagoda.operator import crd

from .stack import Operator, llm_deployment

PEERING = "pagoda-it"


@pytest.fixture
def peer_namespace(cluster: Cluster) -> Iterator[str]:
    """A namespace the shared operator fixture does not watch, with its peering object."""
    name = f"pagoda-peer-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("apply", "--server-side", "-f", str(crd.CRD_PATH.parent / "kopf-peering.yaml"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/kopfpeerings.kopf.dev")
    # Operators discover resources once, at start: the group must be served by then.
    cluster.wait_for("kopf.dev in API discovery",
                     lambda: "kopfpeerings" in cluster.kubectl("api-resources", "--api-group=kopf.dev").stdout, timeout=60)
    cluster.apply({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}}, namespace=name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


def _log_has(operator: Operator, text: str) -> bool:
    return text in operator.log.read_text(errors="replace")


def _peer_priorities(cluster: Cluster, namespace: str) -> list[int]:
    """The priorities of the replicas announced in the peering object."""
    peering = cluster.get("kopfpeerings.kopf.dev", PEERING, namespace) or {}
    return sorted(peer.get("priority", 0) for peer in (peering.get("status") or {}).values())


def test_only_the_highest_priority_replica_reconciles(cluster: Cluster, peer_namespace: str, operator: Operator,
                                                      tmp_path: Path) -> None:
    """A replica starts paused and resumes only when no peer of higher priority
    is alive; kopf logs only the transitions. The active replica is started
    first, so the standby one sees it in its very first view of the peering
    object and never resumes (starting both at once makes the standby either
    resume then pause, or stay paused silently: a race, not a property)."""
    def replica(priority: int) -> Operator:
        return Operator(cluster, operator.kubeconfig, tmp_path / f"operator-{priority}.log",
                        args=["--namespace", peer_namespace, "--peering", PEERING, "--priority", str(priority)])

    high, low = replica(2), replica(1)
    high.start()
    try:
        cluster.wait_for("the high-priority replica to resume", lambda: _log_has(high, "Resuming operations"),
                         timeout=120)
        low.start()
        cluster.wait_for("both replicas in the peering object",
                         lambda: _peer_priorities(cluster, peer_namespace) == [1, 2], timeout=120)
        cluster.apply(llm_deployment("first"), namespace=peer_namespace)
        cluster.wait_for("the active replica to handle first",
                         lambda: _log_has(high, f"[{peer_namespace}/first] Creation is processed"), timeout=60)
        assert cluster.get("deployment.apps", "first", peer_namespace)
        assert not _log_has(low, f"[{peer_namespace}/first]") and not _log_has(low, "Resuming operations")

        high.stop()  # a rolling update takes the active replica away; it leaves the peering on exit
        cluster.wait_for("the standby replica to resume", lambda: _log_has(low, "Resuming operations"), timeout=120)
        cluster.apply(llm_deployment("second"), namespace=peer_namespace)
        cluster.wait_for("children of second", lambda: cluster.get("deployment.apps", "second", peer_namespace),
                         timeout=60)
    finally:
        high.stop()
        low.stop()
