"""Fixtures of the operator's integration tests: a real control plane
(e2e/cluster), the CRD, and the operator running under its own RBAC."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from e2e.cluster import build
from e2e.cluster.client import Cluster
from e2e.cluster.pytest_plugin import kube_cluster  # noqa: F401

from .stack import Operator, install_crd, operator_kubeconfig


@pytest.fixture(scope="session", autouse=True)
def control_plane_binaries() -> None:
    """Skips, before starting anything, when no cluster can be started: the
    local control plane's binaries are not built (`make cluster-binaries`)
    and no external cluster is given (PAGODA_CLUSTER=external + KUBECONFIG)."""
    if os.environ.get("PAGODA_CLUSTER", "local") == "external":
        return
    try:
        for name in ("kube-apiserver", "etcd", "kwok", "kubectl"):
            build.binary(name)
    except build.BuildError as exc:
        pytest.skip(f"no cluster can be started: {exc}")


@pytest.fixture(scope="session")
def cluster(kube_cluster: Cluster) -> Cluster:  # noqa: F811
    install_crd(kube_cluster)
    return kube_cluster


@pytest.fixture(scope="session")
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    process = Operator(cluster, operator_kubeconfig(cluster), tmp_path_factory.mktemp("operator") / "operator.log",
                       env={"PAGODA_OPERATOR_RESYNC_SECONDS": "10"})
    process.start()
    yield process
    process.stop()


@pytest.fixture
def namespace(cluster: Cluster, operator: Operator) -> Iterator[str]:
    """A fresh watched namespace per test; the operator's log is shown when it fails."""
    name = f"pagoda-it-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    cluster.wait_for(f"default ServiceAccount in {name}", lambda: cluster.get("serviceaccount", "default", name))
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    operator = item.funcargs.get("operator") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(operator, Operator):
        report.sections.append(("operator log", operator.log_tail()))
