"""Fixtures of the e2e suite: the cluster, the chart's release, the operator.

Every scenario needs charts/pagoda (issue 7): until it exists the suite is
skipped with that reason, and runs unchanged once it lands.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from e2e.cluster.client import Cluster
from e2e.cluster.pytest_plugin import kube_cluster  # noqa: F401
from e2e.stack import CHART, OperatorProcess, Release


@pytest.fixture(scope="session", autouse=True)
def chart() -> None:
    """Skips before any cluster is started when there is no chart to install."""
    if not (CHART / "Chart.yaml").is_file():
        pytest.skip(f"no chart at {CHART} yet (charts/pagoda: the Helm chart, issue 7)")


@pytest.fixture(scope="session")
def release(kube_cluster: Cluster) -> Iterator[Release]:  # noqa: F811
    # With the prometheus-adapter rules ConfigMap, which the autoscaling
    # scenario serves through a real prometheus-adapter.
    installed = Release.install(kube_cluster, values={"monitoring.prometheusAdapter.enabled": True})
    yield installed
    installed.uninstall()


@pytest.fixture(scope="session")
def operator(release: Release, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    process = OperatorProcess(release, tmp_path_factory.mktemp("operator") / "operator.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def namespace(kube_cluster: Cluster, operator: OperatorProcess) -> Iterator[str]:  # noqa: F811
    """A fresh namespace per scenario; the operator's log is shown on failure."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    kube_cluster.kubectl("create", "namespace", name)
    kube_cluster.wait_for(f"default ServiceAccount in {name}",
                          lambda: kube_cluster.get("serviceaccount", "default", name))
    yield name
    kube_cluster.kubectl("delete", "namespace", name, "--wait=false")
