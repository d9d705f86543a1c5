"""When the operator crosses between zero and one replica."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pagoda.operator import scale_to_zero
from pagoda.operator.manifests import hpa
from pagoda.operator.config import OperatorConfig
from pagoda.operator.v1alpha1 import LLMDeployment, LLMDeploymentSpec

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


def resource(**autoscaling: object) -> LLMDeployment:
    spec = LLMDeploymentSpec.model_validate({"model": {"source": "hf://org/m"}, "autoscaling": autoscaling})
    return LLMDeployment(name="m", namespace="ns", uid="u", spec=spec)


LAZY = resource(enabled=True, minReplicas=0, maxReplicas=4, scaleToZeroDelaySeconds=60)


@pytest.mark.parametrize("replicas, last_request, target", [
    (1, None, 0),                           # never requested: nothing runs
    (3, NOW - timedelta(seconds=61), 0),    # idle past the delay, whatever the HPA had
    (2, NOW - timedelta(seconds=59), None),  # in use: the HPA's to decide
    (0, NOW - timedelta(seconds=5), 1),     # a request for a model at zero
    (0, NOW - timedelta(seconds=61), None),  # an old request: stays at zero
    (0, None, None),
])
def test_target_replicas(replicas: int, last_request: datetime | None, target: int | None) -> None:
    assert scale_to_zero.target_replicas(LAZY, replicas, last_request, NOW) == target


@pytest.mark.parametrize("other", [resource(enabled=True, minReplicas=1, maxReplicas=4),
                                   resource(enabled=False, minReplicas=0, maxReplicas=4)])
def test_only_autoscaled_resources_with_min_zero(other: LLMDeployment) -> None:
    assert scale_to_zero.target_replicas(other, 1, None, NOW) is None
    assert scale_to_zero.target_replicas(other, 0, NOW, NOW) is None


def test_times_round_trip_and_garbage_reads_as_never() -> None:
    assert scale_to_zero.parse_time(scale_to_zero.format_time(NOW)) == NOW
    assert scale_to_zero.parse_time("2026-11-23T12:00:00") == NOW  # no zone: UTC
    assert scale_to_zero.parse_time("yesterday") is None and scale_to_zero.parse_time(None) is None


def test_the_hpa_never_asks_for_zero() -> None:
    rendered = hpa.render(LAZY, OperatorConfig())
    assert rendered is not None and rendered["spec"]["minReplicas"] == 1
