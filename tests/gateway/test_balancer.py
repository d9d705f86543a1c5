"""The balancer: affinity when loads are even, the load bound always, and
consistent hashing's small reshuffle when replicas come and go."""

from __future__ import annotations

import collections

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pagoda.operator.gateway.balancer import Balancer, point

ENDPOINTS = [f"http://10.0.0.{i}:8000" for i in range(1, 6)]
keys = st.text(min_size=1, max_size=40)


@given(keys)
def test_same_key_same_endpoint_when_idle(key: str) -> None:
    balancer = Balancer()
    first = balancer.order(ENDPOINTS, point(key), {})
    assert balancer.order(list(reversed(ENDPOINTS)), point(key), {}) == first  # endpoint order does not matter
    assert sorted(first) == sorted(ENDPOINTS)  # every endpoint, as fall-backs


@settings(max_examples=200)
@given(st.lists(keys, min_size=1, max_size=200), st.sampled_from([1.0, 1.25, 2.0]))
def test_no_endpoint_exceeds_the_bound(stream: list[str], factor: float) -> None:
    """Requests that all stay in flight: each pick keeps its endpoint within
    ceil(factor x mean), even when every request has the same key."""
    balancer = Balancer("prefix-hash", factor)
    loads: collections.Counter[str] = collections.Counter()
    for key in stream:
        bound = balancer.bound(loads, ENDPOINTS)
        pick = balancer.order(ENDPOINTS, point(key), loads)[0]
        loads[pick] += 1
        assert loads[pick] <= bound


def test_one_hot_key_spills_to_its_ring_successors() -> None:
    balancer = Balancer("prefix-hash", 1.25)
    home = balancer.order(ENDPOINTS, point("the same system prompt"), {})
    loads: collections.Counter[str] = collections.Counter()
    for _ in range(50):
        loads[balancer.order(ENDPOINTS, point("the same system prompt"), loads)[0]] += 1
    # Each endpoint in ring order fills to the bound, ceil(1.25 x 50 / 5) = 13, before the next is used.
    assert [loads[e] for e in home] == [13, 13, 12, 12, 0]


def test_keys_spread_over_endpoints() -> None:
    balancer = Balancer()
    picks = collections.Counter(balancer.order(ENDPOINTS, point(f"document {i}"), {})[0] for i in range(2000))
    assert set(picks) == set(ENDPOINTS)
    assert max(picks.values()) < 2 * min(picks.values())  # virtual nodes keep arcs near even


def test_removing_an_endpoint_moves_only_its_keys() -> None:
    balancer = Balancer()
    before = {i: balancer.order(ENDPOINTS, point(f"k{i}"), {})[0] for i in range(1000)}
    gone = ENDPOINTS[2]
    after = {i: balancer.order([e for e in ENDPOINTS if e != gone], point(f"k{i}"), {})[0] for i in range(1000)}
    moved = {i for i in before if before[i] != after[i]}
    assert moved == {i for i in before if before[i] == gone}


def test_least_load_and_round_robin() -> None:
    least = Balancer("least-load")
    assert least.order(ENDPOINTS, point("ignored"), {ENDPOINTS[0]: 3, ENDPOINTS[1]: 0, ENDPOINTS[2]: 1,
                                              ENDPOINTS[3]: 2, ENDPOINTS[4]: 5})[:2] == [ENDPOINTS[1], ENDPOINTS[2]]
    ties = collections.Counter(least.order(ENDPOINTS, None, {})[0] for _ in range(10))
    assert set(ties) == set(ENDPOINTS)  # equal loads take turns
    robin = Balancer("round-robin")
    assert [robin.order(ENDPOINTS, point("same"), {})[0] for _ in range(5)] == ENDPOINTS


def test_keyless_requests_go_to_the_least_loaded() -> None:
    assert Balancer().order(ENDPOINTS, None, {e: 1 for e in ENDPOINTS[:4]})[0] == ENDPOINTS[4]


@pytest.mark.parametrize("strategy, factor", [("random", 1.25), ("prefix-hash", 0.9)])
def test_bad_settings_refused(strategy: str, factor: float) -> None:
    with pytest.raises(ValueError):
        Balancer(strategy, factor)


def test_a_pinned_request_ignores_the_load_bound_and_the_strategy() -> None:
    at = point("a conversation")
    home = Balancer().order(ENDPOINTS, at, {})[0]
    busy = {home: 100}
    assert Balancer().order(ENDPOINTS, at, busy)[0] != home  # unpinned: spills past the bound
    for strategy in ("prefix-hash", "least-load", "round-robin"):
        assert Balancer(strategy).order(ENDPOINTS, at, busy, pinned=True)[0] == home
