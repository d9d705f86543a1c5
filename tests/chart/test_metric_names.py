"""Dashboards and adapter rules read only metrics that exist: pagoda's own,
as engine/metrics.py and operator/gateway/metrics.py define them, or
kube-state-metrics' (fleet dashboard)."""

from __future__ import annotations

import re

from pagoda.engine.metrics import METRIC_NAMES as ENGINE_METRICS
from pagoda.operator.gateway.metrics import METRIC_NAMES as GATEWAY_METRICS

from .kube_state_metrics import FAMILIES as KUBE_STATE_METRICS
from .promql import adapter_rules, metric_names

_HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")
METRIC_NAMES = (*ENGINE_METRICS, *GATEWAY_METRICS)


def _family(name: str) -> str:
    base = _HISTOGRAM_SERIES.sub("", name)
    return base if base in METRIC_NAMES else name


def test_every_referenced_metric_is_exported() -> None:
    referenced = {_family(name) for name in metric_names()}
    unknown = referenced - set(METRIC_NAMES) - set(KUBE_STATE_METRICS)
    assert not unknown, f"dashboards or adapter rules read metrics nobody exports: {sorted(unknown)}"


def test_every_exported_metric_is_on_a_dashboard() -> None:
    shown = {_family(name) for name in metric_names()}
    assert set(METRIC_NAMES) <= shown, f"not on any dashboard: {sorted(set(METRIC_NAMES) - shown)}"


def test_adapter_exposes_the_hpa_metric() -> None:
    from pagoda.operator import flags

    [rule] = adapter_rules()
    assert rule["name"]["as"] == flags.QUEUE_METRIC
    assert rule["seriesQuery"].startswith(flags.QUEUE_METRIC + "{")
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
