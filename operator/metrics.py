"""The operator's Prometheus metrics, defined here and nowhere else.

`pagoda operator --metrics-port` serves them at /metrics, and the chart's
operator Service and ServiceMonitor scrape them; `METRIC_NAMES` lists them
(as `pagoda.engine.metrics` does the engine's) for the tests and docs that
must agree. Every name starts with `pagoda_operator_`, apart from the
engine's `pagoda_`, so the two never collide in one Prometheus.

Only prometheus_client is imported: the operator image carries no torch.
"""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from collections.abc import Callable
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .reconcile import Outcome
from .v1alpha1 import Phase

RECONCILES = "pagoda_operator_reconciles_total"
RECONCILE_DURATION = "pagoda_operator_reconcile_duration_seconds"
PROBLEMS = "pagoda_operator_reconcile_problems_total"
CHILD_CHANGES = "pagoda_operator_child_changes_total"
LLMDEPLOYMENTS = "pagoda_operator_llmdeployments"

METRIC_NAMES: tuple[str, ...] = (RECONCILES, RECONCILE_DURATION, PROBLEMS, CHILD_CHANGES, LLMDEPLOYMENTS)
"""The exported metric families, as PromQL sees them (the histogram adds _bucket/_sum/_count)."""

#: `result` of a reconcile: converged; found a problem (a Secret or claim
#: missing, an apply refused: retried with backoff); raised.
RESULTS = ("success", "problem", "error")
#: A reconcile spans a handful of API calls: milliseconds, seconds on a slow API server.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class OperatorMetrics:
    """The operator's metric families, in their own registry; safe to call
    from kopf's handler threads."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        reg = self.registry
        self._reconciles = Counter(RECONCILES, "Reconciles of an LLMDeployment, by result (success, problem, error).",
                                   ["result"], registry=reg)
        self._duration = Histogram(RECONCILE_DURATION, "Time one reconcile of an LLMDeployment takes.",
                                   buckets=_DURATION_BUCKETS, registry=reg)
        self._problems = Counter(PROBLEMS, "Problems reconciles found, by reason (the Degraded condition's).",
                                 ["reason"], registry=reg)
        self._child_changes = Counter(CHILD_CHANGES, "Children created, updated, restored after a hand edit or "
                                      "deletion, or deleted, by action.", ["action"], registry=reg)
        self._phases = Gauge(LLMDEPLOYMENTS, "LLMDeployments by the phase their last reconcile reported.",
                             ["phase"], registry=reg)
        # Every series from the start, so that rate() and sums see zeros rather than gaps.
        for result in RESULTS:
            self._reconciles.labels(result)
        for phase in get_args(Phase):
            self._phases.labels(phase).set(0)
        self._guard = threading.Lock()
        self._phase_of: dict[str, str] = {}

    def reconciled(self, key: str, reconcile: Callable[[], Outcome]) -> Outcome:
        """Runs `reconcile` of the resource `key` (namespace/name), recording what it did."""
        start = time.perf_counter()
        try:
            outcome = reconcile()
        except Exception:
            self._reconciles.labels("error").inc()
            raise
        finally:
            self._duration.observe(time.perf_counter() - start)
        self._reconciles.labels("problem" if outcome.problems else "success").inc()
        for problem in outcome.problems:
            self._problems.labels(problem.reason).inc()
        for action, _ in outcome.actions:
            self._child_changes.labels(action).inc()
        self._set_phase(key, outcome.status["phase"])
        return outcome

    def forget(self, key: str) -> None:
        """The resource is gone: it no longer counts in any phase."""
        self._set_phase(key, None)

    def _set_phase(self, key: str, phase: str | None) -> None:
        with self._guard:
            if phase is None:
                self._phase_of.pop(key, None)
            else:
                self._phase_of[key] = phase
            counts = Tally(self._phase_of.values())
            for known in get_args(Phase):
                self._phases.labels(known).set(counts[known])

    def serve(self, port: int) -> None:
        """Serves /metrics on every interface at `port`, from a daemon thread."""
        start_http_server(port, registry=self.registry)
