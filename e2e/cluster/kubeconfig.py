"""Kubeconfig files: written self-contained (credentials embedded), so a test
can hand one to a subprocess, or copy the cluster entry of any kubeconfig
(kind's, a cloud's) and pair it with a ServiceAccount token."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from .pki import KeyPair


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def cluster_entry(server: str, ca_cert: Path) -> dict[str, Any]:
    """The `cluster` part of a kubeconfig for a server trusted through `ca_cert`."""
    return {"server": server, "certificate-authority-data": _b64(ca_cert)}


def cert_user(pair: KeyPair) -> dict[str, Any]:
    """The `user` part of a kubeconfig authenticating with a client certificate."""
    return {"client-certificate-data": _b64(pair.cert), "client-key-data": _b64(pair.key)}


def token_user(token: str) -> dict[str, Any]:
    """The `user` part of a kubeconfig authenticating with a bearer token."""
    return {"token": token}


def write(path: Path, cluster: dict[str, Any], user: dict[str, Any], *,
          namespace: str | None = None, name: str = "pagoda-e2e") -> Path:
    """Writes a one-context kubeconfig; JSON, which every client reads as YAML."""
    context: dict[str, str] = {"cluster": name, "user": name}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": context}],
        "current-context": name,
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path
