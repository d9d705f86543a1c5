"""Tells the operator which models are in use, for scale to zero.

The gateway is where requests are seen, so it stamps
`scale_to_zero.LAST_REQUEST_ANNOTATION` on the LLMDeployments that can scale
to zero: at once when a request finds such a model without replicas (the
scale-up starts while the request waits), then every `interval_s` while
requests for it arrive or are still in flight, so a long generation keeps its
replica. Only those LLMDeployments are stamped: every stamp costs the
operator a reconcile. Every gateway replica stamps what it sees; the newest
stamp wins, which is all the operator needs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from datetime import datetime, timezone

from .. import scale_to_zero, v1alpha1
from ..kube import Kube
from .routes import Route

logger = logging.getLogger("pagoda.gateway")

#: The field manager of the gateway's stamps.
FIELD_MANAGER = "pagoda-gateway"


class ActivityReporter:
    def __init__(self, kube: Kube, interval_s: float) -> None:
        self.kube = kube
        self.interval_s = interval_s
        self._requested: set[str] = set()
        self._in_flight: Counter[str] = Counter()
        self._stamped_at: dict[str, float] = {}

    def started(self, route: Route) -> None:
        for source in route.zero_scaled:
            self._requested.add(source)
            self._in_flight[source] += 1

    def finished(self, route: Route) -> None:
        for source in route.zero_scaled:
            self._in_flight[source] -= 1
            if self._in_flight[source] <= 0:
                del self._in_flight[source]

    async def activate(self, route: Route) -> None:
        """Stamps now: a request waits for this model's first replica."""
        for source in route.zero_scaled:
            if time.monotonic() - self._stamped_at.get(source, float("-inf")) > 1.0:
                await asyncio.to_thread(self._stamp, source)

    async def run(self) -> None:
        """Stamps the models in use, every `interval_s`, until cancelled."""
        while True:
            await asyncio.sleep(self.interval_s)
            due = self._requested | set(self._in_flight)
            self._requested = set()
            for source in sorted(due):
                await asyncio.to_thread(self._stamp, source)

    def _stamp(self, source: str) -> None:
        namespace, name = source.split("/", 1)
        self._stamped_at[source] = time.monotonic()
        try:
            self.kube.annotate(v1alpha1.API_VERSION, v1alpha1.KIND, namespace, name,
                               {scale_to_zero.LAST_REQUEST_ANNOTATION: scale_to_zero.format_time(
                                   datetime.now(timezone.utc))}, field_manager=FIELD_MANAGER)
        except Exception as exc:  # a refusal or a dropped connection: the next tick tries again
            logger.warning("could not stamp %s as in use: %r", source, exc)
