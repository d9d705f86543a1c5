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


@pytest.mark.skip(reason="known failure: while another, standalone operator process runs against the same "
                         "cluster (the session's `operator` fixture), the low-priority replica never sees its peer "
                         "and never pauses; without it the same test passes in about 30 s. Cause not found yet")
def test_only_the_highest_priority_replica_reconciles(cluster: Cluster, peer_namespace: str, operator: Operator,
                                                      tmp_path: Path) -> None:
    def replica(priority: int) -> Operator:
        return Operator(cluster, operator.kubeconfig, tmp_path / f"operator-{priority}.log",
                        args=["--namespace", peer_namespace, "--peering", PEERING, "--priority", str(priority)])

    low, high = replica(1), replica(2)
    low.start()
    high.start()
    try:
        cluster.wait_for("the low-priority replica to pause", lambda: _log_has(low, "Pausing operations"), timeout=180)
        cluster.apply(llm_deployment("first"), namespace=peer_namespace)
        cluster.wait_for("children of first", lambda: cluster.get("deployment.apps", "first", peer_namespace),
                         timeout=60)
        assert _log_has(high, f"[{peer_namespace}/first]") and not _log_has(low, f"[{peer_namespace}/first]")

        high.stop()  # a rolling update takes the active replica away
        cluster.wait_for("the other replica to resume", lambda: _log_has(low, "Resuming operations"), timeout=180)
        cluster.apply(llm_deployment("second"), namespace=peer_namespace)
        cluster.wait_for("children of second", lambda: cluster.get("deployment.apps", "second", peer_namespace),
                         timeout=60)
    finally:
        high.stop()
        low.stop()
