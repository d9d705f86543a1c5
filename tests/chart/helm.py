"""charts/pagoda rendered by the real helm binary: the one e2e/cluster builds
(`make cluster-binaries`, a prerequisite of `make test`); missing, it fails."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster import build
from e2e.stack import COMPONENT_LABEL

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "pagoda"
RELEASE, NAMESPACE = "pagoda", "pagoda-system"

#: Values that switch every optional object on.
ALL_ON: dict[str, Any] = {"monitoring": {"operatorServiceMonitor": {"enabled": True},
                                         "gatewayServiceMonitor": {"enabled": True}, "podMonitor": {"enabled": True},
                                         "dashboards": {"enabled": True}, "prometheusAdapter": {"enabled": True}}}


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(build.binary("helm")), *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


def value_args(values: dict[str, Any] | None) -> list[str]:
    return [arg for key, value in (values or {}).items() for arg in ("--set-json", f"{key}={json.dumps(value)}")]


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """`helm template` of the chart, CRDs included, as objects."""
    out = helm("template", RELEASE, str(CHART), "-n", NAMESPACE, "--include-crds", *value_args(values)).stdout
    return [o for o in yaml.safe_load_all(out) if o]


def of_component(objects: list[dict[str, Any]], component: str) -> list[dict[str, Any]]:
    """The objects of the chart's `component` (e2e.stack.OPERATOR, GATEWAY)."""
    return [o for o in objects if (o["metadata"].get("labels") or {}).get(COMPONENT_LABEL) == component]


def one(objects: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    """The one object of `kind`, of `component` when given."""
    [found] = [o for o in (objects if component is None else of_component(objects, component)) if o["kind"] == kind]
    return found
