"""LLMDeployment examples shown to users (README, the chart's NOTES) checked
as the API server would: against the CRD's schema with unknown fields refused
(strict field validation), and against the operator's typed model."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import yaml

from pagoda.operator import v1alpha1

from .helm import REPO

_CRD = yaml.safe_load((REPO / "crds" / "llmdeployment.yaml").read_text())


def in_markdown(text: str) -> list[dict[str, Any]]:
    """The LLMDeployments of the ```yaml blocks of `text`."""
    blocks = (yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, re.S))
    return [b for b in blocks if isinstance(b, dict) and b.get("kind") == v1alpha1.KIND]


def validate(example: dict[str, Any]) -> None:
    """Raises when `example` is not an LLMDeployment the cluster would accept."""
    assert (example["apiVersion"], example["kind"]) == (v1alpha1.API_VERSION, v1alpha1.KIND)
    v1alpha1.LLMDeploymentSpec.model_validate(example["spec"])
    [version] = [v for v in _CRD["spec"]["versions"] if v["name"] == example["apiVersion"].split("/")[1]]
    jsonschema.validate(example["spec"], _strict(version["schema"]["openAPIV3Schema"]["properties"]["spec"]))


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields refused wherever it lists the known ones."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: _strict(v) for k, v in out["properties"].items()}
        if not out.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
    if isinstance(out.get("items"), dict):
        out["items"] = _strict(out["items"])
    return out
