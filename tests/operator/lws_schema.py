"""Offline validation of rendered LeaderWorkerSets against the CRD of the pinned sigs.k8s.io/lws."""

from __future__ import annotations

import functools
from typing import Any

import jsonschema
import pytest
import yaml

from e2e.cluster import build, lws


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema refusing unknown fields, as a typo'd field would otherwise be
    pruned silently by the API server rather than refused."""
    out = {k: _closed(v) if isinstance(v, dict) and k in ("items", "additionalProperties") else v
           for k, v in schema.items()}
    if "properties" in schema:
        out["properties"] = {k: _closed(v) for k, v in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
    return out


@functools.cache
def _schema() -> dict[str, Any]:
    try:
        path = lws.crd_path()
    except build.BuildError as exc:
        pytest.skip(f"the LeaderWorkerSet CRD ({lws.MODULE}) is not available: {exc}")
    version = next(v for v in yaml.safe_load(path.read_text())["spec"]["versions"] if v["name"] == "v1")
    schema = _closed(version["schema"]["openAPIV3Schema"])
    # apiVersion, kind and metadata are the API server's to check.
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


def validate(obj: dict[str, Any]) -> None:
    """Raises if `obj` does not satisfy the LeaderWorkerSet CRD's schema (unknown fields included)."""
    jsonschema.validate(obj, _schema())
