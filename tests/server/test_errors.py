"""Every error class, in OpenAI's format, and the server healthy and serving after each."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import pathlib
import time
from collections.abc import Iterator

import pytest

from tests.server.conftest import MAX_MODEL_LEN, MODEL_NAME, RunningServer, serve_in_thread

openai = pytest.importorskip("openai")

GOOD = {"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 2}


def assert_still_serving(server: RunningServer) -> None:
    assert server.request("GET", "/health", auth=False).status == 200
    ok = server.request("POST", "/v1/completions", GOOD)
    assert ok.status == 200, ok.body
    assert ok.json()["usage"]["completion_tokens"] >= 1


def assert_error(result, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert result.status == status, result.body
    error = result.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


BAD_FIELDS = [
    ({"temperature": -1}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_k": -5}, "top_k"),
    ({"n": 0}, "n"),
    ({"n": 1000}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -3}, "max_tokens"),
    ({"presence_penalty": 5}, "presence_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"min_p": 2}, "min_p"),
    ({"logprobs": 50}, "logprobs"),
    ({"logprobs": -1}, "logprobs"),
    ({"seed": 2**70}, "seed"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 1000}}, "logit_bias"),
    ({"logit_bias": {"99999": 1}}, "logit_bias"),
    ({"stop": [""]}, "stop"),
    ({"stop": 5}, "stop"),
    ({"stop_token_ids": [10**6]}, "stop_token_ids"),
    ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [1, 2, 10**6]}, "prompt"),
    ({"prompt": [-1]}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"prompt": None}, "prompt"),
    ({"stream_options": {"include_usage": "maybe"}}, "stream_options"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     "response_format"),
    ({"structured_outputs": {"regex": "([a-z"}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs"),
    ({"structured_outputs": {"grammar": "root ::= undefined_rule"}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a"}, "response_format": {"type": "json_object"}}, "response_format"),
    ({"suffix": "return x"}, "suffix"),
    ({"best_of": 3}, "best_of"),
]


@pytest.mark.parametrize(("fields", "param"), BAD_FIELDS, ids=[json.dumps(f) for f, _ in BAD_FIELDS])
def test_invalid_completion_fields_are_400(idle_server: RunningServer, fields: dict, param: str) -> None:
    assert_error(idle_server.request("POST", "/v1/completions", {**GOOD, **fields}), 400, param)
    assert_still_serving(idle_server)


BAD_CHAT = [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 30}, "logprobs"),
    ({"max_completion_tokens": 0}, "max_tokens"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "x", "function": {"name": "f"}}]}]}, "messages"),
    ({"chat_template_kwargs": {"tokenize": False}}, "chat_template_kwargs"),
    ({"chat_template_kwargs": ["x"]}, "chat_template_kwargs"),
]


@pytest.mark.parametrize(("fields", "param"), BAD_CHAT, ids=[json.dumps(f) for f, _ in BAD_CHAT])
def test_invalid_chat_fields_are_400(idle_server: RunningServer, fields: dict, param: str) -> None:
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], **fields}
    assert_error(idle_server.request("POST", "/v1/chat/completions", body), 400, param)
    assert_still_serving(idle_server)


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]", b'{"prompt": "x"', "ça".encode("latin-1"), b"null"])
def test_unparsable_bodies_are_400(idle_server: RunningServer, body: bytes) -> None:
    assert idle_server.request("POST", "/v1/completions", body).status == 400
    assert idle_server.request("POST", "/v1/chat/completions", body).status == 400
    assert_still_serving(idle_server)


def test_prompt_longer_than_context_is_400(idle_server: RunningServer) -> None:
    ids = [5] * (MAX_MODEL_LEN + 1)
    error = assert_error(idle_server.request("POST", "/v1/completions", {**GOOD, "prompt": ids}), 400, "prompt",
                         "context_length_exceeded")
    assert str(MAX_MODEL_LEN) in error["message"]
    too_many = {**GOOD, "prompt": [5] * 100, "max_tokens": MAX_MODEL_LEN}
    assert_error(idle_server.request("POST", "/v1/completions", too_many), 400, "max_tokens",
                 "context_length_exceeded")
    long_chat = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "word " * 2000}]}
    assert_error(idle_server.request("POST", "/v1/chat/completions", long_chat), 400, "messages",
                 "context_length_exceeded")
    assert_still_serving(idle_server)


def test_openai_client_sees_bad_request(idle_server: RunningServer) -> None:
    client = openai.OpenAI(base_url=idle_server.url + "/v1", api_key=idle_server.api_key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL_NAME, prompt="x", temperature=-1)
    assert info.value.param == "temperature" and "temperature" in info.value.message
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="gpt-4", prompt="x")
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=idle_server.url + "/v1", api_key="wrong", max_retries=0).models.list()


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"])
def test_unknown_model_is_404(idle_server: RunningServer, path: str) -> None:
    body = {"model": "nope", "prompt": "x", "messages": [{"role": "user", "content": "x"}], "tokens": [1]}
    assert_error(idle_server.request("POST", path, body), 404, "model", "model_not_found")
    assert_still_serving(idle_server)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "test-key"}])
@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/models"), ("POST", "/v1/completions"),
                                              ("POST", "/v1/chat/completions"), ("POST", "/tokenize")])
def test_missing_or_wrong_api_key_is_401(idle_server: RunningServer, headers: dict, method: str, path: str) -> None:
    result = idle_server.request(method, path, GOOD if method == "POST" else None, headers=headers, auth=False)
    assert_error(result, 401, None, "invalid_api_key")
    assert_still_serving(idle_server)


def test_probes_and_metrics_need_no_key(idle_server: RunningServer) -> None:
    for path in ("/health", "/ready", "/metrics", "/version", "/openapi.json"):
        assert idle_server.request("GET", path, auth=False).status == 200, path


def test_unknown_route_and_method(idle_server: RunningServer) -> None:
    assert_error(idle_server.request("GET", "/v1/nothing"), 404)
    assert_error(idle_server.request("GET", "/v1/completions"), 405)
    assert_still_serving(idle_server)


def test_detokenize_bad_tokens_is_400(idle_server: RunningServer) -> None:
    for tokens in ([10**9], [-1], [2**80], ["a"]):
        assert_error(idle_server.request("POST", "/detokenize", {"tokens": tokens}), 400, "tokens")
    assert_error(idle_server.request("POST", "/tokenize", {"prompt": "x", "messages": []}), 400, "prompt")
    assert_still_serving(idle_server)


# ---- a full queue ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_seat_server(model_dir: pathlib.Path) -> Iterator[RunningServer]:
    """One sequence at a time and at most two waiting: easy to fill."""
    with serve_in_thread([str(model_dir), "--served-model-name", MODEL_NAME, "--max-num-seqs", "1",
                          "--max-queue-len", "2"]) as running:
        yield running


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _open_stream(server: RunningServer) -> http.client.HTTPConnection:
    """Starts a long streaming completion and returns its connection once the headers are in."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    body = {**GOOD, "max_tokens": 2000, "ignore_eos": True, "stream": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    assert conn.getresponse().status == 200
    return conn


def test_full_queue_is_503_with_retry_after(one_seat_server: RunningServer) -> None:
    server = one_seat_server
    streams = []
    for expected_waiting in (0, 1, 2):  # one running, then two waiting
        streams.append(_open_stream(server))
        wait_for(lambda waiting=expected_waiting: server.state.engine.stats.num_running == 1
                 and server.state.engine.stats.num_waiting == waiting)
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: server.request("POST", "/v1/completions", GOOD), range(4)))
        for result in results:
            error = assert_error(result, 503, None, "queue_full")
            assert int(result.headers["retry-after"]) >= 1 and "queue" in error["message"]
        assert server.request("GET", "/ready").status == 503
        assert server.request("GET", "/health").status == 200
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.InternalServerError) as info:
            client.completions.create(model=MODEL_NAME, prompt="x")
        assert info.value.status_code == 503
    finally:
        for conn in streams:
            conn.close()  # the disconnects abort all three
    server.wait_idle()
    assert server.request("GET", "/ready").status == 200
    assert_still_serving(server)


def test_null_fields_mean_unset(idle_server: RunningServer) -> None:
    body = {**GOOD, "n": None, "stream": None, "temperature": None, "stop": None, "logit_bias": None, "user": None}
    assert idle_server.request("POST", "/v1/completions", body).json()["usage"]["completion_tokens"] >= 1
    chat = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi", "name": None}], "logprobs": None,
            "max_tokens": 2, "stream_options": None}
    assert idle_server.request("POST", "/v1/chat/completions", chat).status == 200


def test_a_dead_engine_fails_requests_and_liveness(model_dir: pathlib.Path) -> None:
    with serve_in_thread([str(model_dir), "--served-model-name", MODEL_NAME]) as server:
        engine = server.state.engine.engine

        def broken_step() -> list:
            raise RuntimeError("simulated device failure")

        engine.core_step = broken_step
        error = assert_error(server.request("POST", "/v1/completions", GOOD), 503, None, "engine_unavailable")
        assert "simulated device failure" in error["message"]
        assert server.request("GET", "/health").status == 503
        assert server.request("GET", "/ready").status == 503
        assert_error(server.request("POST", "/v1/completions", GOOD), 503, None, "engine_unavailable")


# Valid JSON that Python parses into values no tokenizer or JSON encoder takes as they are.
HOSTILE = [
    ("/v1/completions", rb'{"prompt": "\ud800 hi", "max_tokens": 2}', "prompt"),
    ("/v1/chat/completions", rb'{"messages": [{"role": "user", "content": "\udfff"}], "max_tokens": 2}', "messages"),
    ("/tokenize", rb'{"prompt": "\ud800"}', "prompt"),
    ("/v1/completions", rb'{"prompt": "hi", "model": "\ud800"}', "model"),
    ("/v1/completions", rb'{"prompt": "hi", "logit_bias": {"\ud800": 1}}', "logit_bias"),
    ("/v1/completions", rb'{"prompt": "hi", "temperature": NaN}', "temperature"),
    ("/v1/completions", rb'{"prompt": "hi", "top_p": Infinity}', "top_p"),
    ("/v1/completions", rb'{"prompt": "hi", "max_tokens": 1e400}', "max_tokens"),
]


@pytest.mark.parametrize(("path", "body", "param"), HOSTILE, ids=[b.decode() for _, b, _ in HOSTILE])
def test_hostile_values_are_4xx(idle_server: RunningServer, path: str, body: bytes, param: str) -> None:
    result = idle_server.request("POST", path, body)
    assert result.status in (400, 404), result.body
    assert result.json()["error"]["param"] == param
    assert_still_serving(idle_server)


def test_an_empty_grammar_is_a_400_not_a_hang(idle_server: RunningServer) -> None:
    """Found by the fuzzer: the request never got an answer."""
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "structured_outputs": {"grammar": ""}}
    answer = idle_server.request("POST", "/v1/chat/completions", body, timeout=20)
    assert answer.status == 400 and "grammar is invalid" in answer.json()["error"]["message"]
