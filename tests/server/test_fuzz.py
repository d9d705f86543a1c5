"""Fuzzing the published OpenAPI schema: no request, valid or not, gets a 5xx.

Schemathesis generates bodies from the server's own schema (the pydantic
models of protocol.py), both conforming (positive) and violating it
(negative); every response must be an answer, not a server error. The
hypothesis strategies are driven directly: schemathesis' pytest plugin does
not support this pytest version.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from tests.server.conftest import API_KEY, MODEL_NAME, RunningServer, serve_in_thread

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

EXAMPLES = 40  # per operation and mode

OPERATIONS = [
    ("GET", "/health"), ("GET", "/ready"), ("GET", "/metrics"), ("GET", "/version"), ("GET", "/v1/models"),
    ("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("POST", "/tokenize"), ("POST", "/detokenize"),
    ("POST", "/v1/load_lora_adapter"), ("POST", "/v1/unload_lora_adapter"), ("POST", "/v1/embeddings"),
    ("POST", "/v1/responses"), ("GET", "/v1/responses/{response_id}"), ("DELETE", "/v1/responses/{response_id}"),
    ("POST", "/classify"), ("POST", "/score"), ("POST", "/v1/score"), ("POST", "/rerank"), ("POST", "/v1/rerank"),
    ("POST", "/v2/rerank"),
]


@pytest.fixture(scope="module")
def fuzz_server(model_dir: pathlib.Path) -> Iterator[RunningServer]:
    # A short context keeps fuzzed generations short; requests come one by one, so the queue never fills.
    with serve_in_thread([str(model_dir), "--served-model-name", MODEL_NAME, "--api-key", API_KEY,
                          "--max-model-len", "48", "--enable-lora"]) as running:
        yield running


@pytest.fixture(scope="module")
def api_schema(fuzz_server: RunningServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")


def test_every_operation_is_fuzzed(api_schema: schemathesis.BaseSchema) -> None:
    published = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert published == set(OPERATIONS)


# Invalid requests only exist where there is a body to break.
CASES = [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS] + [
    (m, p, GenerationMode.NEGATIVE) for m, p in OPERATIONS if m == "POST"
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_no_request_gets_a_5xx(api_schema: schemathesis.BaseSchema, fuzz_server: RunningServer,
                               method: str, path: str, mode: GenerationMode) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode), served_model=st.booleans())
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case: schemathesis.Case, served_model: bool) -> None:
        if served_model and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = MODEL_NAME  # a random name is always a 404: get past it half of the time
        response = case.call(base_url=fuzz_server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
        case.validate_response(response, checks=[not_a_server_error])

    fuzz()
    assert fuzz_server.state.engine.is_alive
    fuzz_server.wait_idle()
