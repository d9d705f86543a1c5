"""A minimal external volume provisioner for the test cluster's storage class.

KWOK nodes run no CSI driver, yet the operator's model-cache claim must be
Bound or the scheduler never places its pods. This loop plays the external
provisioner's part of the protocol: for each pending claim of the class it
creates a PersistentVolume pre-bound to it (the real PV controller then binds
the pair), and it deletes released volumes. It talks through kubectl, so it
works against any cluster, and polls, so it needs no watch bookkeeping.

    python -m e2e.cluster.provisioner --kubeconfig PATH --kubectl PATH
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import manifests


def _kubectl(kubectl: Path, kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run([str(kubectl), f"--kubeconfig={kubeconfig}", *args], input=stdin,
                          capture_output=True, text=True, check=False, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip())
    return done.stdout


def reconcile(items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """From listed claims and volumes: volumes to create, volume names to delete."""
    existing = {obj["metadata"]["name"] for obj in items if obj["kind"] == "PersistentVolume"}
    create = [manifests.volume_for(obj) for obj in items
              if obj["kind"] == "PersistentVolumeClaim" and manifests.needs_volume(obj)]
    create = [pv for pv in create if pv["metadata"]["name"] not in existing]
    delete = [obj["metadata"]["name"] for obj in items
              if obj["kind"] == "PersistentVolume" and manifests.released(obj)]
    return create, delete


def run(kubectl: Path, kubeconfig: Path, interval: float) -> None:
    """Reconciles every `interval` seconds until SIGTERM; API errors are
    logged and retried (the API server may be restarting)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        try:
            items = json.loads(_kubectl(kubectl, kubeconfig, "get", "pvc,pv", "-A", "-o", "json"))["items"]
            create, delete = reconcile(items)
            if create:
                _kubectl(kubectl, kubeconfig, "create", "-f", "-", stdin=json.dumps(manifests.as_list(create)))
                print("provisioned", *(pv["metadata"]["name"] for pv in create), flush=True)
            if delete:
                _kubectl(kubectl, kubeconfig, "delete", "pv", "--ignore-not-found", "--wait=false", *delete)
                print("deleted", *delete, flush=True)
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
            print(f"provisioner: {exc}", file=sys.stderr, flush=True)
        time.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--kubectl", type=Path, required=True)
    # Each poll costs a kubectl run (~60 ms of CPU): every 2 s is ~3% of a core.
    parser.add_argument("--interval", type=float, default=2.0)
    args = parser.parse_args(argv)
    run(args.kubectl, args.kubeconfig, args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
