"""The gateway's Prometheus metrics, defined here and nowhere else.

Served at the gateway's own /metrics. Every name starts with
`pagoda_gateway_`, apart from the engine's `pagoda_` and the operator's
`pagoda_operator_`, so the three never collide in one Prometheus.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REQUESTS = "pagoda_gateway_requests_total"
REQUEST_DURATION = "pagoda_gateway_request_duration_seconds"
UPSTREAM_RETRIES = "pagoda_gateway_upstream_retries_total"
IN_FLIGHT = "pagoda_gateway_requests_in_flight"
ENDPOINTS = "pagoda_gateway_endpoints"

METRIC_NAMES: tuple[str, ...] = (REQUESTS, REQUEST_DURATION, UPSTREAM_RETRIES, IN_FLIGHT, ENDPOINTS)
"""The exported metric families, as PromQL sees them (the histogram adds _bucket/_sum/_count)."""

#: From a rejected request (milliseconds) to a long generation (minutes).
_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class GatewayMetrics:
    """The gateway's metric families, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = reg = registry or CollectorRegistry()
        self.requests = Counter(REQUESTS, "Requests answered, by model and HTTP status code (the upstream's, or the "
                                "gateway's own refusal).", ["model", "code"], registry=reg)
        self.duration = Histogram(REQUEST_DURATION, "Time from a request's arrival to the end of its response, "
                                  "streamed responses included.", ["model"], buckets=_DURATION_BUCKETS, registry=reg)
        self.retries = Counter(UPSTREAM_RETRIES, "Requests sent to another endpoint after one could not be reached "
                               "or answered 503.", ["model"], registry=reg)
        self.in_flight = Gauge(IN_FLIGHT, "Requests being proxied, by model.", ["model"], registry=reg)
        self.endpoints = Gauge(ENDPOINTS, "Ready endpoints the gateway routes to, by model.", ["model"], registry=reg)

    def set_endpoints(self, counts: dict[str, int]) -> None:
        """The ready endpoints of each model; models gone are dropped."""
        self.endpoints.clear()
        for model, count in counts.items():
            self.endpoints.labels(model).set(count)
