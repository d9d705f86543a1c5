"""`pagoda gateway` in front of two real engines, driven by the official
openai client and by raw HTTP: outputs equal a direct call's, requests that
share a prefix meet one replica, an unreachable replica is skipped, errors
keep OpenAI's shape, and a client that leaves frees the engine's request."""

from __future__ import annotations

import asyncio
import collections
import http.client
import json
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import openai
import pytest
from aiohttp import web

from pagoda.operator.gateway.balancer import Balancer
from pagoda.operator.gateway.metrics import GatewayMetrics
from pagoda.operator.gateway.proxy import Gateway
from pagoda.operator.gateway.settings import GatewaySettings
from pagoda.operator.gateway.routes import Route, RouteTable
from tests.server.conftest import RunningServer, free_port

from .conftest import MODEL, GatewayProcess

pytestmark = pytest.mark.slow


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def raw_post(url: str, path: str, body: bytes, timeout: float = 60,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_completions_and_streamed_chat_equal_a_direct_call(gateway: GatewayProcess,
                                                           engines: tuple[RunningServer, RunningServer]) -> None:
    via, direct = client(gateway.url), client(engines[0].url)
    ask = dict(model=MODEL, prompt="The gateway forwards", max_tokens=12, temperature=0)
    assert via.completions.create(**ask).choices[0].text == direct.completions.create(**ask).choices[0].text
    chat = dict(model=MODEL, messages=[{"role": "user", "content": "Hello there"}], max_tokens=10, temperature=0)
    streamed = via.chat.completions.create(**chat, stream=True, stream_options={"include_usage": True})
    chunks = list(streamed)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10
    assert text == direct.chat.completions.create(**chat).choices[0].message.content
    assert via.embeddings.create(model=MODEL, input="embed").data[0].embedding == \
        direct.embeddings.create(model=MODEL, input="embed").data[0].embedding
    # vLLM's unversioned pooling endpoints pass too (an embedding model scores by cosine).
    rerank = {"model": MODEL, "query": "tea", "documents": ["a drink", "a city"]}
    for path in ("/rerank", "/v2/rerank", "/score"):
        body = rerank if "rerank" in path else {"model": MODEL, "text_1": "tea", "text_2": ["a drink", "a city"]}
        status, _, reply = raw_post(gateway.url, path, json.dumps(body).encode())
        unnamed = [{k: v for k, v in json.loads(r).items() if k not in ("id", "created")}
                   for r in (reply, engines[0].request("POST", path, body).body)]
        assert status == 200 and unnamed[0] == unnamed[1]


def test_models_lists_every_routed_name(gateway: GatewayProcess) -> None:
    assert sorted(m.id for m in client(gateway.url).models.list().data) == ["dead", MODEL]


def test_requests_sharing_a_prefix_meet_one_replica(gateway: GatewayProcess,
                                                    engines: tuple[RunningServer, RunningServer]) -> None:
    served: dict[int, set[str]] = collections.defaultdict(set)
    for turn in range(2):
        for doc in range(16):
            body = {"model": MODEL, "prompt": f"Document {doc}: " + "lorem ipsum " * 8 + f"question {turn}",
                    "max_tokens": 1}
            status, headers, _ = raw_post(gateway.url, "/v1/completions", json.dumps(body).encode())
            assert status == 200
            served[doc].add(headers["x-pagoda-upstream"])
    assert all(len(upstreams) == 1 for upstreams in served.values())  # each document stays on its replica
    assert set().union(*served.values()) == {engines[0].url, engines[1].url}  # and documents spread


def test_an_unreachable_replica_is_skipped(flaky_gateway: GatewayProcess, unreachable: str) -> None:
    for i in range(30):  # about half pick the dead replica first, until it is avoided for a while
        answer = client(flaky_gateway.url).completions.create(model=MODEL, prompt=f"try {i}", max_tokens=1)
        assert answer.choices[0].finish_reason == "length"
    assert flaky_gateway.metric("pagoda_gateway_upstream_retries_total", model=MODEL) >= 1
    assert flaky_gateway.metric("pagoda_gateway_requests_total", code="200", model=MODEL) == 30
    assert unreachable in flaky_gateway.log.read_text()  # logged once it failed


def test_errors_keep_openai_shape(gateway: GatewayProcess) -> None:
    via = client(gateway.url)
    with pytest.raises(openai.NotFoundError) as missing:
        via.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    assert missing.value.body["code"] == "model_not_found" and missing.value.body["param"] == "model"
    with pytest.raises(openai.APIStatusError) as dead:
        via.completions.create(model="dead", prompt="x", max_tokens=1)
    assert dead.value.status_code == 502 and "could be reached" in dead.value.message
    for body, message in ((b"{not json", "not valid JSON"), (b'{"prompt": "no model"}', "model is required"),
                          (b"[1, 2]", "model is required")):
        status, _, reply = raw_post(gateway.url, "/v1/completions", body)
        assert status == 400 and message in json.loads(reply)["error"]["message"]
    status, _, reply = raw_post(gateway.url, "/v1/completions", b'{"model": "x", "prompt": "' + b"a" * (65 << 20) + b'"}')
    assert status == 413 and "exceeds the gateway's limit of 64 MiB" in json.loads(reply)["error"]["message"]
    # The engine's own refusals pass through unchanged.
    with pytest.raises(openai.BadRequestError, match="temperature"):
        via.completions.create(model=MODEL, prompt="x", max_tokens=1, temperature=-1)
    assert gateway.metric("pagoda_gateway_requests_total", code="404", model="no-such-model") == 1


def test_a_client_that_leaves_mid_stream_frees_the_engine(gateway: GatewayProcess,
                                                          engines: tuple[RunningServer, RunningServer]) -> None:
    parts = urllib.parse.urlsplit(gateway.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    body = {"model": MODEL, "prompt": "a long story", "max_tokens": 200, "ignore_eos": True, "stream": True}
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.readline().startswith(b"data: ")
    upstream = next(e for e in engines if e.url == resp.getheader("x-pagoda-upstream"))
    aborted = upstream.metric("pagoda_requests_total", finish_reason="abort")
    conn.sock.close()  # type: ignore[union-attr]
    conn.close()
    upstream.wait_idle()  # the request is gone and its KV blocks are free
    assert upstream.metric("pagoda_requests_total", finish_reason="abort") == aborted + 1


def test_requests_wait_for_discovery_and_for_a_first_replica(engines: tuple[RunningServer, RunningServer]) -> None:
    """Before discovery has listed the cluster the gateway is not ready, and a
    request waits for the table (then for a ready replica) instead of failing."""
    async def scenario() -> None:
        gateway = Gateway(Balancer(), GatewayMetrics(), GatewaySettings(endpoint_wait_s=5))
        runner = web.AppRunner(gateway.app(), handler_cancellation=True)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{url}/ready") as ready:
                    assert ready.status == 503
                ask = session.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2})
                pending = asyncio.ensure_future(ask)
                await asyncio.sleep(0.3)
                # Listed, but no replica ready yet: the request keeps waiting.
                gateway.set_table(RouteTable({MODEL: Route(MODEL, ())}), synced=True)
                await asyncio.sleep(0.3)
                assert not pending.done()
                gateway.set_table(RouteTable({MODEL: Route(MODEL, (engines[1].url,))}))
                async with await pending as answer:
                    assert answer.status == 200 and answer.headers["x-pagoda-upstream"] == engines[1].url
                async with session.get(f"{url}/ready") as ready:
                    assert ready.status == 200
                # A model that stays without replicas: 503 with Retry-After once the wait is over.
                gateway.settings = GatewaySettings(endpoint_wait_s=0.2)
                gateway.set_table(RouteTable({MODEL: Route(MODEL, ())}))
                async with session.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "x"}) as refused:
                    assert refused.status == 503 and refused.headers["Retry-After"] == "5"
                    assert "no replica" in (await refused.json())["error"]["message"]
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


def test_a_stored_conversation_continues_on_the_replica_that_stored_it(gateway: GatewayProcess) -> None:
    """Each turn's input differs, so only the point the response ids carry keeps a
    conversation on the replica whose memory holds it."""
    via = client(gateway.url)
    for conversation in range(6):
        response = via.responses.create(model=MODEL, input=f"Conversation {conversation} starts here.",
                                        max_output_tokens=2, temperature=0)
        for turn in range(3):
            response = via.responses.create(model=MODEL, input=f"turn {turn}: something else entirely",
                                            previous_response_id=response.id, max_output_tokens=2,
                                            temperature=0)
            assert response.previous_response_id is not None
        # The id alone (no model) finds the replica that stored it, for GET and DELETE.
        assert via.responses.retrieve(response.id).model_dump() == response.model_dump()
        via.responses.delete(response.id)
        with pytest.raises(openai.NotFoundError):
            via.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        via.responses.retrieve("resp-not-one-of-ours")


def test_a_full_queue_sends_the_request_to_another_replica(
        busy_gateway: tuple[GatewayProcess, list[RunningServer]]) -> None:
    """Three requests of one prompt share a home replica: the first runs, the second waits, and
    the third, refused there with 503, is retried on the other replica."""
    gateway, engines = busy_gateway
    parts = urllib.parse.urlsplit(gateway.url)
    prompt = "one prompt, one home replica"
    running = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    running.request("POST", "/v1/completions", body=json.dumps(
        {"model": MODEL, "prompt": prompt, "max_tokens": 1500, "ignore_eos": True, "stream": True}),
        headers={"Content-Type": "application/json"})
    first = running.getresponse()
    assert first.status == 200 and first.readline().startswith(b"data: ")
    home = first.getheader("x-pagoda-upstream")
    body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 1}).encode()
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(raw_post, gateway.url, "/v1/completions", body)
        deadline = time.monotonic() + 10
        while not any(e.url == home and e.state.engine.num_waiting for e in engines):
            assert time.monotonic() < deadline, "the second request never queued"
            time.sleep(0.01)
        status, headers, _ = raw_post(gateway.url, "/v1/completions", body)
        assert status == 200 and headers["x-pagoda-upstream"] != home
        assert gateway.metric("pagoda_gateway_upstream_retries_total", model=MODEL) == 1
        running.sock.close()  # type: ignore[union-attr]
        running.close()
        assert waiting.result(timeout=60)[1]["x-pagoda-upstream"] == home  # it ran there once the first left


def test_a_sessions_requests_meet_one_replica_whatever_their_prompts(gateway: GatewayProcess,
                                                                   engines: tuple[RunningServer, RunningServer]) -> None:
    served: dict[int, set[str]] = collections.defaultdict(set)
    for session in range(12):
        for turn in range(3):
            body = json.dumps({"model": MODEL, "prompt": f"turn {turn} of something unrelated {session}",
                               "max_tokens": 1}).encode()
            status, headers, _ = raw_post(gateway.url, "/v1/completions", body,
                                          headers={"x-session-id": f"user-{session}"})
            assert status == 200
            served[session].add(headers["x-pagoda-upstream"])
    assert all(len(upstreams) == 1 for upstreams in served.values())
    assert set().union(*served.values()) == {engines[0].url, engines[1].url}


def test_least_load_counts_what_the_engines_report(least_load_gateway: GatewayProcess,
                                                   busy_engines: list[RunningServer]) -> None:
    """A replica kept busy by a client the gateway never saw is avoided: its own /metrics say so."""
    busy, idle = busy_engines
    parts = urllib.parse.urlsplit(busy.url)
    direct = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    direct.request("POST", "/v1/completions", body=json.dumps(
        {"model": MODEL, "prompt": "kept busy", "max_tokens": 1500, "ignore_eos": True, "stream": True}),
        headers={"Content-Type": "application/json"})
    response = direct.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: ")
    try:
        time.sleep(0.6)  # a few reads of the engines' loads
        body = json.dumps({"model": MODEL, "prompt": "short", "max_tokens": 1}).encode()
        upstreams = [raw_post(least_load_gateway.url, "/v1/completions", body)[1]["x-pagoda-upstream"]
                     for _ in range(6)]
        assert upstreams == [idle.url] * 6
    finally:
        direct.sock.close()  # type: ignore[union-attr]
        direct.close()
        busy.wait_idle()


def test_engine_load_reads_the_engines_gauges() -> None:
    from pagoda.engine.metrics import METRIC_NAMES
    from pagoda.operator.gateway.engine_load import LOAD_GAUGES, EngineLoads, parse_load

    assert set(LOAD_GAUGES) <= set(METRIC_NAMES)
    text = ('pagoda_requests_running{model_name="a"} 2.0\npagoda_requests_waiting{model_name="a"} 3.0\n'
            'pagoda_requests_running{model_name="b"} 1.0\npagoda_kv_cache_usage_ratio{model_name="a"} 0.5\n')
    assert parse_load(text) == 6
    loads = EngineLoads(1.0)
    loads.reported = {"x": 4, "y": 0}
    assert loads.weigh({"y": 2, "z": 1}) == {"x": 4, "y": 2, "z": 1}
