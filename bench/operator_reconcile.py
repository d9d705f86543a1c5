"""Reconcile latency of the operator: time from `kubectl apply` of N
LLMDeployments to all their children existing (and to all being Ready),
for N = 1 and N = 50, against the local control plane of e2e/cluster with the
operator running as a local process under its least-privilege RBAC.

    python bench/operator_reconcile.py        # writes bench/results/operator_reconcile.json
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from e2e.cluster.build import read_versions  # noqa: E402
from e2e.cluster.client import Cluster  # noqa: E402
from e2e.cluster.launcher import LocalCluster  # noqa: E402
from tests.operator.integration.stack import Operator, install_crd, llm_deployment, operator_kubeconfig  # noqa: E402

RESULT = REPO / "bench" / "results" / "operator_reconcile.json"
#: The children every resource of the benchmark gets (no autoscaling).
CHILD_KINDS = ("persistentvolumeclaims", "deployments.apps", "services", "poddisruptionbudgets.policy")
SIZES = (1, 50)


def _count(cluster: Cluster, namespace: str, kinds: str, prefix: str) -> dict[str, int]:
    items = cluster.get(kinds, namespace=namespace, selector="app.kubernetes.io/managed-by=pagoda-operator")["items"]
    counts: dict[str, int] = {}
    for item in items:
        if item["metadata"]["labels"].get("pagoda.dev/llmdeployment", "").startswith(prefix):
            counts[item["kind"]] = counts.get(item["kind"], 0) + 1
    return counts


def _ready(cluster: Cluster, namespace: str, prefix: str) -> int:
    items = cluster.get("llmdeployments.pagoda.dev", namespace=namespace)["items"]
    return sum(1 for i in items if i["metadata"]["name"].startswith(prefix)
               and i.get("status", {}).get("phase") == "Ready")


def measure(cluster: Cluster, namespace: str, n: int, timeout: float = 300) -> dict[str, Any]:
    prefix = f"b{n}-"
    # CPU-only, so that every pod fits the few simulated nodes and "Ready"
    # measures the operator, not a shortage of GPUs.
    manifests = [llm_deployment(f"{prefix}{i}", resources={"gpus": 0}) for i in range(n)]
    start = time.monotonic()
    cluster.apply(*manifests, namespace=namespace)
    applied = time.monotonic() - start
    children_s = ready_s = None
    kinds = ",".join(CHILD_KINDS)
    while time.monotonic() - start < timeout:
        if children_s is None:
            counts = _count(cluster, namespace, kinds, prefix)
            if len(counts) == len(CHILD_KINDS) and all(c == n for c in counts.values()):
                children_s = time.monotonic() - start
        if children_s is not None and _ready(cluster, namespace, prefix) == n:
            ready_s = time.monotonic() - start
            break
        time.sleep(0.1)
    return {"resources": n, "apply_s": round(applied, 3),
            "children_present_s": None if children_s is None else round(children_s, 3),
            "all_ready_s": None if ready_s is None else round(ready_s, 3)}


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="pagoda-bench-") as tmp:
        work = Path(tmp)
        local = LocalCluster(work / "cluster")
        cluster = local.start()
        operator = None
        try:
            install_crd(cluster)
            operator = Operator(cluster, operator_kubeconfig(cluster), work / "operator.log")
            operator.start()
            namespace = "pagoda-it-bench"
            cluster.kubectl("create", "namespace", namespace)
            cluster.wait_for("default ServiceAccount",
                             lambda: cluster.get("serviceaccount", "default", namespace), timeout=60)
            # Warm-up: the operator's first reconcile pays for connections and imports.
            measure(cluster, namespace, 1)
            results = [measure(cluster, namespace, n) for n in SIZES]
        finally:
            if operator is not None:
                print(operator.log_tail(10), file=sys.stderr)
                operator.stop()
            local.stop()
    record = {
        "benchmark": "operator_reconcile",
        "what": "seconds from `kubectl apply` of N LLMDeployments (one call) to all their PVC, Deployment, "
                "Service and PDB existing, and to all reporting phase Ready (CPU-only specs, KWOK-simulated pods)",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "versions": {"python": platform.python_version(), **read_versions()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": results,
    }
    RESULT.parent.mkdir(exist_ok=True)
    RESULT.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
