"""The LeaderWorkerSet CRD (sigs.k8s.io/lws) at its pinned version, from the Go module proxy.

The operator renders a LeaderWorkerSet for replicas that span several
machines; tests check it against the real CRD's schema offline and apply it
to the local API server with that CRD installed. Only the CRD is used: no LWS
controller runs, so no group of pods ever starts.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from . import build

MODULE = "sigs.k8s.io/lws"
CRD_FILE = "config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml"


def crd_path() -> Path:
    """The CRD's file in the module cache (downloaded once through the Go
    proxy); raises BuildError when go or the module cannot be had."""
    version = build.read_versions()["LWS_VERSION"]
    # Outside any module, so no go.mod is consulted or written.
    listing = build._go(["mod", "download", "-json", f"{MODULE}@{version}"], Path(tempfile.gettempdir()),
                        capture=True)
    path = Path(json.loads(listing)["Dir"]) / CRD_FILE
    if not path.is_file():
        raise build.BuildError(f"{MODULE}@{version} has no {CRD_FILE}")
    return path
