"""What each engine says its load is, read from its own /metrics.

The gateway counts the requests it has in flight to each replica, but a
replica also serves other gateway replicas and clients that reach its
Service directly. Every `interval_s` the gateway reads each endpoint's
`pagoda_requests_running` and `pagoda_requests_waiting` (vLLM
production-stack's router reads its engines' stats the same way) and the
balancer weighs a replica by the larger of that and its own count: the
engines' figure covers everyone, the gateway's covers what it sent since.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from .. import flags

logger = logging.getLogger("pagoda.gateway")

#: The engine's gauges whose sum is its load (defined in pagoda.engine.metrics; a test keeps them there).
LOAD_GAUGES = ("pagoda_requests_running", flags.QUEUE_METRIC)


def parse_load(exposition: str) -> int:
    """Running plus waiting requests, over every model an engine serves."""
    return int(sum(sample.value for family in text_string_to_metric_families(exposition)
                   for sample in family.samples if sample.name in LOAD_GAUGES))


class EngineLoads:
    """The last load each endpoint reported; endpoints that did not answer report nothing."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.reported: dict[str, int] = {}

    def weigh(self, local: Mapping[str, int]) -> dict[str, int]:
        """Each endpoint's load for the balancer: the larger of the engine's and the gateway's own count."""
        return {e: max(local.get(e, 0), self.reported.get(e, 0)) for e in {*local, *self.reported}}

    async def _read(self, session: aiohttp.ClientSession, endpoint: str) -> None:
        try:
            async with session.get(f"{endpoint}/metrics", timeout=aiohttp.ClientTimeout(total=self.interval_s)) as r:
                if r.status == 200:
                    self.reported[endpoint] = parse_load(await r.text())
                    return
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            logger.debug("no load from %s: %r", endpoint, exc)
        self.reported.pop(endpoint, None)

    async def run(self, session: aiohttp.ClientSession, endpoints: Callable[[], Iterable[str]]) -> None:
        """Reads every endpoint's load each interval, until cancelled."""
        while True:
            current = set(endpoints())
            for gone in set(self.reported) - current:
                del self.reported[gone]
            await asyncio.gather(*(self._read(session, e) for e in current))
            await asyncio.sleep(self.interval_s)
