"""Offline validation of rendered objects against a current Kubernetes release."""

from __future__ import annotations

from typing import Any

import kubernetes_validate

#: The Kubernetes release whose published schemas the manifests must satisfy.
KUBERNETES_VERSION = "1.37.0"


def validate(obj: dict[str, Any]) -> None:
    """Raises if `obj` is not a valid object of its kind (unknown fields included)."""
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
