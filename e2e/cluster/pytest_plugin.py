"""pytest fixture `kube_cluster`: a session-wide cluster for integration and
e2e tests.

Import the fixture into a conftest (`from e2e.cluster.pytest_plugin import
kube_cluster`) or load the plugin (`-p e2e.cluster.pytest_plugin`). Several
conftests may import it in one session: they share one cluster, stopped
after the last of them is done.

By default a local control plane is started (binaries from `make
cluster-binaries`); with PAGODA_CLUSTER=external the cluster of KUBECONFIG
(or ~/.kube/config) is used instead, with simulated GPU nodes added to it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .client import Cluster
from .launcher import ExternalCluster, LocalCluster


@dataclass
class _Shared:
    owner: LocalCluster | ExternalCluster
    cluster: Cluster
    users: int = 0


_shared: _Shared | None = None


def _start(workdir: Path) -> _Shared:
    if os.environ.get("PAGODA_CLUSTER", "local") == "external":
        source = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or str(Path.home() / ".kube" / "config")
        external = ExternalCluster(workdir)
        return _Shared(external, external.start(Path(source)))
    local = LocalCluster(workdir)
    return _Shared(local, local.start())


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The session's cluster: kubeconfig, server, kubectl/helm helpers and
    simulated GPU nodes (see e2e.cluster.client.Cluster)."""
    global _shared
    if _shared is None:
        _shared = _start(tmp_path_factory.mktemp("kube-cluster"))
    shared = _shared
    shared.users += 1
    try:
        yield shared.cluster
    finally:
        shared.users -= 1
        if shared.users == 0:
            _shared = None
            shared.owner.stop()
