"""An operator watching one namespace named exactly, under the RBAC the
chart renders for it (`helm install` of charts/pagoda): a Role in that
namespace, and cluster-wide only the reads kopf's discovery needs. The API
server lets it act there and nowhere else; it reconciles there without a
permission warning from kopf; its metrics endpoint counts what it did."""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e.cluster.client import Cluster
from e2e.cluster.launcher import free_port
from e2e.stack import GATEWAY, OPERATOR, Release
from pagoda.operator import rbac
from pagoda.operator.rbac import Scope

from .stack import Operator, llm_deployment

PLURAL = "llmdeployments.pagoda.dev"
#: Objects nobody else in this session uses.
SUFFIX = uuid.uuid4().hex[:8]
WATCHED, ELSEWHERE = f"pagoda-named-{SUFFIX}", f"pagoda-other-{SUFFIX}"


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[Release]:
    for namespace in (WATCHED, ELSEWHERE):
        cluster.kubectl("create", "namespace", namespace)
    installed = Release.install(cluster, name="pagoda-named", namespace=f"pagoda-named-system-{SUFFIX}",
                                values={"operator": {"watchNamespaces": [WATCHED]}})
    yield installed
    installed.uninstall()
    for namespace in (WATCHED, ELSEWHERE, installed.namespace):
        cluster.kubectl("delete", "namespace", namespace, "--wait=false")


@pytest.fixture(scope="module")
def operator(release: Release, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """`pagoda operator` with the chart's arguments and settings, as the chart's
    ServiceAccount (its own ports, so that it never contends with another)."""
    cluster = release.cluster
    process = Operator(cluster, cluster.service_account_kubeconfig(release.service_account(OPERATOR), release.namespace),
                       tmp_path_factory.mktemp("named-operator") / "operator.log", env=release.operator_env(),
                       args=release.args(OPERATOR), metrics_port=free_port())
    process.start()
    yield process
    process.stop()


def _can(release: Release, verb: str, resource: str, namespace: str | None, component: str = OPERATOR) -> bool:
    """`kubectl auth can-i` as the release's ServiceAccount of `component`; namespace None: in every namespace."""
    where = ["-n", namespace] if namespace else ["--all-namespaces"]
    # can-i reads TYPE/NAME: a subresource is its own flag.
    resource, _, sub = resource.partition("/")
    where += [f"--subresource={sub}"] if sub else []
    done = release.cluster.kubectl(
        "auth", "can-i", verb, resource, *where,
        f"--as=system:serviceaccount:{release.namespace}:{release.service_account(component)}", check=False)
    return done.stdout.strip() == "yes"


def _qualified(group: str, resource: str) -> str:
    name, _, sub = resource.partition("/")
    return (f"{name}.{group}" if group else name) + (f"/{sub}" if sub else "")


def test_the_chart_rendered_a_role_for_the_named_namespace(release: Release) -> None:
    [role] = release.of_kind("Role", OPERATOR)
    assert role["metadata"]["namespace"] == WATCHED
    [cluster_role] = release.of_kind("ClusterRole")
    assert cluster_role["rules"] == [r.policy_rule() for r in rbac.RULES if r.scope is Scope.CLUSTER]
    # The gateway's reads hold there too, and it has nothing cluster-wide.
    [gateway_role] = release.of_kind("Role", GATEWAY)
    assert (gateway_role["metadata"]["namespace"], gateway_role["rules"]) == (
        WATCHED, [r.policy_rule() for r in rbac.GATEWAY_RULES])


def test_it_may_do_in_its_namespace_what_the_operator_needs(release: Release) -> None:
    """Every rule of the namespace, but for ServiceMonitors: `can-i` needs the
    kind served, and no prometheus-operator is installed here."""
    served = set(release.cluster.kubectl("api-resources", "-o", "name").stdout.split())
    needed = [(verb, _qualified(rule.group, resource)) for rule in rbac.RULES if rule.scope is Scope.NAMESPACE
              for resource in rule.resources for verb in rule.verbs]
    unserved = {resource for _, resource in needed if resource.split("/")[0] not in served}
    assert unserved == {"servicemonitors.monitoring.coreos.com"}
    missing = [f"{verb} {resource}" for verb, resource in needed
               if resource not in unserved and not _can(release, verb, resource, WATCHED)]
    assert missing == []
    assert not _can(release, "list", "secrets", WATCHED), "least privilege: Secrets are only read by name"


def test_it_may_not_read_or_write_elsewhere(release: Release) -> None:
    for namespace in (ELSEWHERE, None):
        granted = [(verb, resource) for verb, resource in (
            ("get", "secrets"), ("list", "deployments.apps"), ("create", "deployments.apps"), ("list", "pods"),
            ("get", PLURAL), ("patch", f"{PLURAL}/status"), ("create", "events"))
            if _can(release, verb, resource, namespace)]
        assert granted == [], f"granted in {namespace or 'every namespace'}"


def test_the_gateway_may_act_in_its_namespace_and_nothing_else(release: Release) -> None:
    needed = [(verb, _qualified(rule.group, resource)) for rule in rbac.GATEWAY_RULES
              for resource in rule.resources for verb in rule.verbs]
    assert [n for n in needed if not _can(release, *n, WATCHED, GATEWAY)] == []
    for namespace in (ELSEWHERE, None):
        assert [n for n in needed if _can(release, *n, namespace, GATEWAY)] == [], namespace
    assert not [(verb, resource) for verb, resource in (("create", PLURAL), ("delete", PLURAL),
                                                        ("list", "pods"), ("get", "secrets"))
                if _can(release, verb, resource, WATCHED, GATEWAY)], "the gateway's rules and nothing more"


def test_cluster_wide_it_holds_only_kopfs_discovery(release: Release) -> None:
    assert _can(release, "watch", "namespaces", None)
    assert _can(release, "watch", "customresourcedefinitions.apiextensions.k8s.io", None)
    assert not _can(release, "get", "namespaces", None)
    assert not _can(release, "list", "clusterkopfpeerings.kopf.dev", None)


def _scrape(operator: Operator) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _scrape_once_up(operator: Operator) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    try:
        return _scrape(operator)
    except OSError:  # not listening yet
        assert operator.alive(), operator.log_tail()
        return None


def _phase_count(operator: Operator, phase: str) -> float:
    return _scrape(operator)[("pagoda_operator_llmdeployments", (("phase", phase),))]


def test_it_reconciles_its_namespace_and_counts_in_its_metrics(release: Release, operator: Operator) -> None:
    cluster = release.cluster
    before = cluster.wait_for("the metrics endpoint", lambda: _scrape_once_up(operator))
    assert before[("pagoda_operator_reconciles_total", (("result", "success"),))] == 0

    cluster.apply(llm_deployment("chat"), namespace=WATCHED)
    cluster.apply(llm_deployment("ignored"), namespace=ELSEWHERE)
    cluster.wait_for("chat Ready", lambda: (cluster.get(PLURAL, "chat", WATCHED) or {}).get("status", {})
                     .get("phase") == "Ready" or None, timeout=60)
    cluster.wait_for("the Ready phase counted", lambda: _phase_count(operator, "Ready") == 1 or None)
    after = _scrape(operator)
    assert after[("pagoda_operator_reconciles_total", (("result", "success"),))] >= 1
    assert after[("pagoda_operator_reconcile_duration_seconds_count", ())] >= 1
    assert after[("pagoda_operator_child_changes_total", (("action", "Created"),))] >= 4
    assert "status" not in cluster.get(PLURAL, "ignored", ELSEWHERE)
    log = operator.log.read_text(errors="replace")
    # kopf's words when RBAC stops its discovery, its watches or its events.
    assert not [w for w in ("Not enough permissions", "Forbidden", "Failed to post") if w in log], operator.log_tail()

    cluster.kubectl("delete", PLURAL, "chat", "-n", WATCHED)
    cluster.wait_for("the deleted resource uncounted", lambda: _phase_count(operator, "Ready") == 0 or None)
