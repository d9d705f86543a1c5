"""Every Prometheus metric pagoda exports, defined here and nowhere else.

Dashboards, alerts and the autoscaling rules (prometheus-adapter turns
`pagoda_requests_waiting` into the HPA's per-pod metric) refer to these names,
so they are a public interface: `METRIC_NAMES` lists them for tests that keep
the consumers in step. Every series carries the label `model_name`.

The engine thread is the only writer: it calls `record_step` after every
iteration with the outputs it produced and a snapshot of scheduler and cache
state, so the counters are exact without any lock in the step loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pagoda.engine.outputs import RequestOutput

# Seconds. Token latencies span a fast GPU decode (ms) to a CPU under load (s).
_TOKEN_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
)
_REQUEST_LATENCY_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)

METRIC_NAMES: tuple[str, ...] = (
    "pagoda_requests_running",
    "pagoda_requests_waiting",
    "pagoda_kv_cache_usage_ratio",
    "pagoda_prefix_cache_queries_total",
    "pagoda_prefix_cache_hits_total",
    "pagoda_preemptions_total",
    "pagoda_prompt_tokens_total",
    "pagoda_generation_tokens_total",
    "pagoda_requests_total",
    "pagoda_time_to_first_token_seconds",
    "pagoda_inter_token_latency_seconds",
    "pagoda_e2e_request_latency_seconds",
    "pagoda_request_queue_time_seconds",
    "pagoda_spec_decode_draft_tokens_total",
    "pagoda_spec_decode_accepted_tokens_total",
)
"""The exported metric families, as PromQL sees them (histograms add _bucket/_sum/_count)."""


@dataclass(frozen=True)
class EngineStats:
    """Scheduler and cache state after one engine iteration; counters are cumulative."""

    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    num_preemptions: int = 0
    spec_draft_tokens: int = 0
    spec_accepted_tokens: int = 0


@dataclass
class _Progress:
    num_tokens: int
    last_token_time: float


def request_finish_reason(output: RequestOutput) -> str:
    """One reason per request: `length` if any of its choices ran out of room, else `stop`."""
    reasons = {c.finish_reason for c in output.outputs}
    return "length" if "length" in reasons else "stop"


class EngineMetrics:
    """The metric families of one served model, in their own registry."""

    def __init__(self, model_name: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.model_name = model_name
        label = ["model_name"]
        reg = self.registry

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, label, registry=reg).labels(model_name)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, label, registry=reg).labels(model_name)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, label, buckets=buckets, registry=reg).labels(model_name)

        self.requests_running = gauge("pagoda_requests_running", "Requests with a sequence in the running batch.")
        self.requests_waiting = gauge(
            "pagoda_requests_waiting", "Requests queued for admission to the batch (the autoscaling target)."
        )
        self.kv_cache_usage = gauge("pagoda_kv_cache_usage_ratio", "Fraction of KV-cache blocks held by live sequences.")
        self.prefix_queries = counter("pagoda_prefix_cache_queries_total",
                                      "Prompt tokens looked up in the prefix cache.")
        self.prefix_hits = counter("pagoda_prefix_cache_hits_total",
                                   "Prompt tokens served from the prefix cache.")
        self.preemptions = counter("pagoda_preemptions_total", "Sequences preempted for lack of KV-cache blocks.")
        self.spec_drafts = counter("pagoda_spec_decode_draft_tokens_total",
                                   "Speculative draft tokens verified (0 unless speculative decoding is on).")
        self.spec_accepted = counter("pagoda_spec_decode_accepted_tokens_total",
                                     "Speculative draft tokens kept: tokens gained over one per pass.")
        self.prompt_tokens = counter("pagoda_prompt_tokens_total", "Prompt tokens of requests that started generating.")
        self.generation_tokens = counter("pagoda_generation_tokens_total", "Tokens generated.")
        self._requests = Counter(
            "pagoda_requests_total", "Finished requests by finish reason (stop, length, abort).",
            ["model_name", "finish_reason"], registry=reg,
        )
        self.ttft = histogram(
            "pagoda_time_to_first_token_seconds", "From arrival to the first generated token.", _REQUEST_LATENCY_BUCKETS
        )
        self.itl = histogram(
            "pagoda_inter_token_latency_seconds", "Between successive tokens of a request.", _TOKEN_LATENCY_BUCKETS
        )
        self.e2e = histogram(
            "pagoda_e2e_request_latency_seconds", "From arrival to the last token.", _REQUEST_LATENCY_BUCKETS
        )
        self.queue_time = histogram(
            "pagoda_request_queue_time_seconds", "From arrival to first scheduling.", _REQUEST_LATENCY_BUCKETS
        )
        self._last = EngineStats()
        self._progress: dict[str, _Progress] = {}

    def request_finished(self, finish_reason: str) -> None:
        self._requests.labels(self.model_name, finish_reason).inc()

    def record_abort(self, request_id: str) -> None:
        """An accepted request ended without finishing (client gone, shutdown)."""
        self._progress.pop(request_id, None)
        self.request_finished("abort")

    def record_step(self, stats: EngineStats, outputs: list[RequestOutput], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._record_stats(stats)
        for out in outputs:
            self._record_output(out, now)

    def _record_stats(self, stats: EngineStats) -> None:
        last = self._last
        self.requests_running.set(stats.num_running)
        self.requests_waiting.set(stats.num_waiting)
        self.kv_cache_usage.set(stats.kv_cache_usage)
        # The engine keeps cumulative counts; Prometheus counters take increments.
        self.prefix_queries.inc(stats.prefix_cache_queries - last.prefix_cache_queries)
        self.prefix_hits.inc(stats.prefix_cache_hits - last.prefix_cache_hits)
        self.preemptions.inc(stats.num_preemptions - last.num_preemptions)
        self.spec_drafts.inc(stats.spec_draft_tokens - last.spec_draft_tokens)
        self.spec_accepted.inc(stats.spec_accepted_tokens - last.spec_accepted_tokens)
        self._last = stats

    def _record_output(self, out: RequestOutput, now: float) -> None:
        num_tokens = sum(len(c.token_ids) for c in out.outputs)
        progress = self._progress.get(out.request_id)
        m = out.metrics
        if progress is None:
            # First output: the prompt has been prefilled and the first token sampled.
            self.prompt_tokens.inc(len(out.prompt_token_ids))
            if m is not None and m.first_token_time is not None:
                self.ttft.observe(m.first_token_time - m.arrival_time)
            if m is not None and m.first_scheduled_time is not None:
                self.queue_time.observe(m.first_scheduled_time - m.arrival_time)
            progress = self._progress[out.request_id] = _Progress(0, now)
        elif num_tokens > progress.num_tokens:
            self.itl.observe(now - progress.last_token_time)
            progress.last_token_time = now
        self.generation_tokens.inc(num_tokens - progress.num_tokens)
        progress.num_tokens = num_tokens
        if out.finished:
            del self._progress[out.request_id]
            if m is not None:
                self.e2e.observe((m.finished_time or now) - m.arrival_time)
            self.request_finished(request_finish_reason(out))
