"""Command line of the local cluster, behind `make cluster-up` / `cluster-down`.

    python -m e2e.cluster build            # build or reuse the pinned binaries
    python -m e2e.cluster up [--gpu-nodes N] [--gpus-per-node G]
    python -m e2e.cluster status
    python -m e2e.cluster down

`up` leaves the control plane running in the background and prints the
KUBECONFIG to export; its files live in PAGODA_CLUSTER_DIR (e2e/.cluster).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import build, launcher
from .client import KubectlError

DEFAULT_DIR = Path(__file__).resolve().parent.parent / ".cluster"


def _workdir() -> Path:
    return Path(os.environ.get("PAGODA_CLUSTER_DIR", DEFAULT_DIR)).resolve()


def _up(args: argparse.Namespace) -> int:
    workdir = _workdir()
    state = launcher.read_state(workdir)
    if state is None:
        launcher.stop_detached(workdir)  # a half-dead earlier cluster
        started = time.monotonic()
        cluster = launcher.LocalCluster(workdir, gpu_nodes=args.gpu_nodes, gpus_per_node=args.gpus_per_node,
                                        detached=True).start()
        print(f"cluster-up: {cluster.server} ready in {time.monotonic() - started:.1f}s with "
              f"{len(cluster.gpu_nodes)} nodes x {cluster.gpus_per_node} nvidia.com/gpu", file=sys.stderr)
        kubeconfig = cluster.kubeconfig
    else:
        print(f"cluster-up: already running at {state['server']}", file=sys.stderr)
        kubeconfig = Path(state["kubeconfig"])
    print(f"export KUBECONFIG={kubeconfig}")
    return 0


def _down(_: argparse.Namespace) -> int:
    stopped = launcher.stop_detached(_workdir())
    print("cluster-down: stopped" if stopped else "cluster-down: no cluster was running", file=sys.stderr)
    return 0


def _status(_: argparse.Namespace) -> int:
    state = launcher.read_state(_workdir())
    if state is None:
        print("not running")
        return 1
    print(f"running at {state['server']}\nexport KUBECONFIG={state['kubeconfig']}")
    for process in state["processes"]:
        print(f"  {process['name']:<24} pid {process['pid']:<8} log {process['log']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.cluster", description="pagoda's local Kubernetes")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build or reuse the pinned binaries").set_defaults(run=lambda _: build.main())
    up = commands.add_parser("up", help="start the control plane in the background")
    up.add_argument("--gpu-nodes", type=int, default=launcher.LocalCluster.gpu_nodes)
    up.add_argument("--gpus-per-node", type=int, default=launcher.LocalCluster.gpus_per_node)
    up.set_defaults(run=_up)
    commands.add_parser("down", help="stop it").set_defaults(run=_down)
    commands.add_parser("status", help="tell whether it runs").set_defaults(run=_status)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (build.BuildError, launcher.ClusterError, KubectlError, TimeoutError) as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
