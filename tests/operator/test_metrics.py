"""The operator's metrics: the families METRIC_NAMES lists, and what one
reconcile records in them."""

from __future__ import annotations

import pytest

from pagoda.operator.metrics import METRIC_NAMES, OperatorMetrics
from pagoda.operator.reconcile import Outcome
from pagoda.operator.status import Problem


def _outcome(phase: str, *, problems: list[Problem] | None = None,
             actions: list[tuple[str, str]] | None = None) -> Outcome:
    return Outcome(status={"phase": phase}, actions=actions or [], problems=problems or [])


def _value(metrics: OperatorMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_families_are_exactly_the_listed_names() -> None:
    families = OperatorMetrics().registry.collect()
    names = {family.name + ("_total" if family.type == "counter" else "") for family in families}
    assert names == set(METRIC_NAMES)
    assert all(name.startswith("pagoda_operator_") for name in METRIC_NAMES)


def test_a_reconcile_counts_its_result_problems_changes_and_duration() -> None:
    metrics = OperatorMetrics()
    metrics.reconciled("ns/a", lambda: _outcome("Progressing", actions=[("Created", "Deployment a"),
                                                                        ("Created", "Service a")]))
    metrics.reconciled("ns/a", lambda: _outcome("Degraded", problems=[Problem("SecretNotFound", "no Secret")]))
    assert _value(metrics, "pagoda_operator_reconciles_total", result="success") == 1
    assert _value(metrics, "pagoda_operator_reconciles_total", result="problem") == 1
    assert _value(metrics, "pagoda_operator_reconcile_problems_total", reason="SecretNotFound") == 1
    assert _value(metrics, "pagoda_operator_child_changes_total", action="Created") == 2
    assert _value(metrics, "pagoda_operator_reconcile_duration_seconds_count") == 2


def test_a_failing_reconcile_counts_as_an_error_and_raises() -> None:
    metrics = OperatorMetrics()

    def boom() -> Outcome:
        raise RuntimeError("API server gone")

    with pytest.raises(RuntimeError):
        metrics.reconciled("ns/a", boom)
    assert _value(metrics, "pagoda_operator_reconciles_total", result="error") == 1
    assert _value(metrics, "pagoda_operator_reconcile_duration_seconds_count") == 1


def test_resources_count_in_the_phase_of_their_last_reconcile_until_gone() -> None:
    metrics = OperatorMetrics()
    metrics.reconciled("ns/a", lambda: _outcome("Progressing"))
    metrics.reconciled("ns/b", lambda: _outcome("Progressing"))
    metrics.reconciled("ns/a", lambda: _outcome("Ready"))
    phases = {p: _value(metrics, "pagoda_operator_llmdeployments", phase=p)
              for p in ("Pending", "Progressing", "Ready", "Degraded")}
    assert phases == {"Pending": 0, "Progressing": 1, "Ready": 1, "Degraded": 0}
    metrics.forget("ns/b")
    metrics.forget("ns/unknown")
    assert _value(metrics, "pagoda_operator_llmdeployments", phase="Progressing") == 0
    assert _value(metrics, "pagoda_operator_llmdeployments", phase="Ready") == 1
