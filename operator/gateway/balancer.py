"""Which endpoint of a model serves a request.

`prefix-hash` is consistent hashing with bounded loads (Mirrokni, Thorup and
Zadimoghaddam, 2018; KubeAI's CHWBL): a request's affinity key hashes to a
point on a ring of virtual nodes and goes to the first endpoint clockwise
whose in-flight count stays within `load_factor` times the mean. Equal
prefixes meet the same replica (and its prefix cache) while no replica takes
more than its bound; adding or removing a replica moves only the keys of its
arc. `least-load` ignores the prompt; `round-robin` is what a Service does
(as near as kube-proxy's random choice), kept as the baseline to compare with.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
from collections.abc import Mapping, Sequence

STRATEGIES = ("prefix-hash", "least-load", "round-robin")
#: Virtual nodes per endpoint: enough that arcs are within a few percent of even.
VIRTUAL_NODES = 100
DEFAULT_LOAD_FACTOR = 1.25


def point(text: str) -> int:
    """Where a key (or a virtual node) sits on the ring: 64 bits of its hash."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


class Ring:
    """The hash ring of one set of endpoints."""

    def __init__(self, endpoints: Sequence[str], virtual_nodes: int = VIRTUAL_NODES) -> None:
        points = sorted((point(f"{endpoint}#{i}"), endpoint) for endpoint in endpoints for i in range(virtual_nodes))
        self._hashes = [h for h, _ in points]
        self._owners = [e for _, e in points]

    def walk(self, at: int) -> list[str]:
        """Every endpoint once, in ring order from the point `at`."""
        start = bisect.bisect(self._hashes, at)
        seen: dict[str, None] = {}
        for i in range(len(self._owners)):
            seen.setdefault(self._owners[(start + i) % len(self._owners)])
        return list(seen)


class Balancer:
    """Picks endpoints by one strategy; the caller keeps the in-flight counts."""

    def __init__(self, strategy: str = "prefix-hash", load_factor: float = DEFAULT_LOAD_FACTOR) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"routing strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
        if load_factor < 1:
            raise ValueError(f"load factor must be at least 1, not {load_factor}")
        self.strategy = strategy
        self.load_factor = load_factor
        self._rings: dict[tuple[str, ...], Ring] = {}
        self._turns = itertools.count()

    def _ring(self, endpoints: Sequence[str]) -> Ring:
        members = tuple(sorted(endpoints))
        ring = self._rings.get(members)
        if ring is None:
            if len(self._rings) > 256:  # endpoint sets come and go with rollouts
                self._rings.clear()
            ring = self._rings[members] = Ring(members)
        return ring

    def bound(self, loads: Mapping[str, int], endpoints: Sequence[str]) -> int:
        """Most in-flight requests an endpoint may hold after taking one more."""
        total = sum(loads.get(e, 0) for e in endpoints) + 1
        return math.ceil(self.load_factor * total / len(endpoints))

    def order(self, endpoints: Sequence[str], at: int | None, loads: Mapping[str, int], *,
              pinned: bool = False) -> list[str]:
        """The endpoints in the order to try them: the pick first, then the
        fall-backs for when it cannot be reached. `at` is the request's
        affinity point; `pinned` ignores the load bound (and the strategy):
        the replica there holds state the request needs."""
        if not endpoints:
            return []
        if pinned and at is not None:
            return self._ring(endpoints).walk(at)
        if self.strategy == "round-robin":
            start = next(self._turns) % len(endpoints)
            return [*endpoints[start:], *endpoints[:start]]
        if self.strategy == "least-load" or at is None:
            turn, n = next(self._turns), len(endpoints)  # ties go round, not always to the first endpoint
            ranked = sorted(range(n), key=lambda i: (loads.get(endpoints[i], 0), (i - turn) % n))
            return [endpoints[i] for i in ranked]
        ring_order = self._ring(endpoints).walk(at)
        bound = self.bound(loads, endpoints)
        within = [e for e in ring_order if loads.get(e, 0) + 1 <= bound]
        return within + [e for e in ring_order if e not in within]
