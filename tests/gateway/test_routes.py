"""The route table from LLMDeployments and EndpointSlices, and requests' affinity keys."""

from __future__ import annotations

from typing import Any

import pytest

from pagoda.operator.gateway import affinity, routes


def llmd(name: str, namespace: str = "team-a", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "pagoda.dev/v1alpha1", "kind": "LLMDeployment",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}"},
            "spec": {"model": {"source": "hf://Qwen/Qwen3-0.6B"}, **spec}}


def endpoint_slice(owner: str, *endpoints: dict[str, Any], namespace: str = "team-a", port: int = 8000,
                   port_name: str = "http") -> dict[str, Any]:
    """As the EndpointSlice controller writes them for the operator's Service."""
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"{owner}-abcde", "namespace": namespace,
                         "labels": {"pagoda.dev/llmdeployment": owner, "kubernetes.io/service-name": owner}},
            "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
            "endpoints": list(endpoints)}


def pod(ip: str, ready: bool | None = True, terminating: bool = False) -> dict[str, Any]:
    conditions: dict[str, Any] = {"terminating": terminating}
    if ready is not None:
        conditions["ready"] = ready
    return {"addresses": [ip], "conditions": conditions, "targetRef": {"kind": "Pod", "name": f"pod-{ip}"}}


def test_served_name_and_adapters_route_to_ready_pods() -> None:
    table = routes.build(
        [llmd("qwen", adapters=[{"name": "sql", "source": "pvc://loras/sql"}])],
        [endpoint_slice("qwen", pod("10.0.0.1"), pod("10.0.0.2", ready=False), pod("10.0.0.3", ready=None),
                        pod("10.0.0.4", terminating=True))])
    base = table.get("Qwen/Qwen3-0.6B")
    assert base is not None and base.endpoints == ("http://10.0.0.1:8000", "http://10.0.0.3:8000")
    assert base.parent is None and base.sources == ("team-a/qwen",)
    adapter = table.get("sql")
    assert adapter is not None and adapter.endpoints == base.endpoints and adapter.parent == "Qwen/Qwen3-0.6B"


def test_slices_match_by_namespace_and_owner() -> None:
    table = routes.build(
        [llmd("a", model={"source": "pvc://models/a", "servedName": "m"}),
         llmd("a", namespace="team-b", model={"source": "pvc://models/a", "servedName": "other"})],
        [endpoint_slice("a", pod("10.0.0.1")), endpoint_slice("a", pod("10.0.1.1"), namespace="team-b"),
         endpoint_slice("a", pod("10.0.0.9"), port_name="metrics")])
    assert table.get("m").endpoints == ("http://10.0.0.1:8000",)  # type: ignore[union-attr]
    assert table.get("other").endpoints == ("http://10.0.1.1:8000",)  # type: ignore[union-attr]


def test_a_name_served_twice_gets_both_and_ipv6_is_bracketed() -> None:
    served = {"source": "pvc://models/a", "servedName": "m"}
    table = routes.build([llmd("blue", model=served), llmd("green", model=served)],
                         [endpoint_slice("blue", pod("10.0.0.1")), endpoint_slice("green", pod("fd00::5"))])
    route = table.get("m")
    assert route is not None and route.endpoints == ("http://10.0.0.1:8000", "http://[fd00::5]:8000")
    assert route.sources == ("team-a/blue", "team-a/green")


def test_no_ready_pod_keeps_the_name_with_no_endpoints() -> None:
    route = routes.build([llmd("qwen")], []).get("Qwen/Qwen3-0.6B")
    assert route is not None and route.endpoints == ()


def test_an_unparseable_resource_is_skipped() -> None:
    table = routes.build([llmd("bad", replicas="many"), llmd("good")], [])
    assert list(table.routes) == ["Qwen/Qwen3-0.6B"]


def test_static_backends() -> None:
    table = routes.static(["m=http://127.0.0.1:8001/", "m=http://127.0.0.1:8002", "n=https://e.example"])
    assert table.get("m").endpoints == ("http://127.0.0.1:8001", "http://127.0.0.1:8002")  # type: ignore[union-attr]
    for bad in ("m", "=http://x", "m=ftp://x"):
        with pytest.raises(ValueError, match="MODEL="):
            routes.static([bad])


@pytest.mark.parametrize("path, body, text", [
    ("/v1/completions", {"prompt": "Once upon a time"}, "Once upon a time"),
    ("/v1/completions", {"prompt": ["first", "second"]}, "first"),
    ("/v1/completions", {"prompt": [1, 2, 3]}, "1 2 3"),
    ("/v1/completions", {"prompt": [[7, 8], [9]]}, "7 8"),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "Summarize this."},
                                           {"role": "assistant", "content": "Sure."},
                                           {"role": "user", "content": "And this?"}]}, "Summarize this."),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                       {"type": "image_url"},
                                                                       {"type": "text", "text": "b"}]}]}, "ab"),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "only a system prompt"}]},
     "only a system prompt"),
    ("/v1/responses", {"input": "Hello"}, "Hello"),
    ("/v1/responses", {"input": [{"role": "user", "content": "Hi"}]}, "Hi"),
    ("/v1/embeddings", {"input": "embed me"}, "embed me"),
    ("/v1/chat/completions", {"messages": "not a list"}, ""),
])
def test_prompt_text(path: str, body: dict[str, Any], text: str) -> None:
    assert affinity.prompt_text(path, body) == text


def test_affinity_key_is_per_model_and_prefix() -> None:
    long_doc = "x" * 500
    key = affinity.affinity_key("m", "/v1/completions", {"prompt": long_doc + " question 1"}, 100)
    assert key == affinity.affinity_key("m", "/v1/completions", {"prompt": long_doc + " question 2"}, 100)
    assert key != affinity.affinity_key("adapter", "/v1/completions", {"prompt": long_doc}, 100)
    assert affinity.affinity_key("m", "/v1/completions", {"prompt": ""}) is None


def test_zero_scaled_sources_are_marked() -> None:
    lazy = {"enabled": True, "minReplicas": 0, "maxReplicas": 2}
    served = {"source": "pvc://models/a", "servedName": "m"}
    table = routes.build([llmd("lazy", model=served, autoscaling=lazy), llmd("busy", model=served),
                          llmd("other", autoscaling=lazy)], [])
    assert table.get("m").zero_scaled == ("team-a/lazy",)  # type: ignore[union-attr]
    assert table.get("m").sources == ("team-a/busy", "team-a/lazy")  # type: ignore[union-attr]
    assert table.get("Qwen/Qwen3-0.6B").zero_scaled == ("team-a/other",)  # type: ignore[union-attr]


def test_a_continuation_is_pinned_to_its_conversation_point() -> None:
    from pagoda import affinity as shared
    from pagoda.operator.gateway.balancer import point

    first = {"input": "Tell me about Paris"}
    at, pinned = affinity.affinity_point("m", "/v1/responses", first)
    assert (at, pinned) == (point(affinity.affinity_key("m", "/v1/responses", first)), False)
    # The engine names the response after the point the gateway sent it...
    response_id = shared.response_id(shared.parse_point(shared.format_point(at)))
    assert shared.point_of_response(response_id) == at
    # ...and the next turn, whatever its input, is pinned there.
    assert affinity.affinity_point("m", "/v1/responses", {"input": "And Rome?", "previous_response_id": response_id}) \
        == (at, True)
    for foreign in ("resp-0123", "resp_abc", None, 42):
        assert shared.point_of_response(foreign) is None  # type: ignore[arg-type]
        assert affinity.affinity_point("m", "/v1/responses", {"input": "x", "previous_response_id": foreign})[1] is False
    assert shared.parse_point("00ff00ff00ff00ff") == 0x00FF00FF00FF00FF and shared.parse_point("xyz") is None


def test_a_session_keys_the_request_instead_of_its_prompt() -> None:
    one = affinity.affinity_point("m", "/v1/completions", {"prompt": "first"}, session="user-1")
    assert one == affinity.affinity_point("m", "/v1/completions", {"prompt": "second"}, session="user-1")
    assert one != affinity.affinity_point("m", "/v1/completions", {"prompt": "first"}, session="user-2")
    assert one != affinity.affinity_point("m", "/v1/completions", {"prompt": "first"})
    assert one[1] is False  # still within the load bound
