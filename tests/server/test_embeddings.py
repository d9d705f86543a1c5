"""POST /v1/embeddings through the official openai client (which asks for base64 by default)."""

from __future__ import annotations

import base64
import pathlib
import struct

import pytest
import torch

from tests.engine.hf_reference import hf_embedding
from tests.server.conftest import API_KEY, MAX_MODEL_LEN, MODEL_NAME, RunningServer
from tests.server.test_errors import assert_error, assert_still_serving

openai = pytest.importorskip("openai")

TEXTS = ["Hello, my name is", "The capital of France is", "def fib(n):"]


@pytest.fixture
def client(idle_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=idle_server.url + "/v1", api_key=API_KEY, max_retries=0)


def token_ids(server: RunningServer, text: str) -> list[int]:
    return server.request("POST", "/tokenize", {"prompt": text}).json()["tokens"]


def vector(embedding: list[float] | str) -> torch.Tensor:
    """A data item's embedding; the raw base64 string when the caller asked for base64 itself."""
    if isinstance(embedding, str):
        raw = base64.b64decode(embedding)
        return torch.tensor(struct.unpack(f"<{len(raw) // 4}f", raw))
    return torch.tensor(embedding)


# None: the client's default, base64 that it decodes itself.
@pytest.mark.parametrize("encoding_format", [None, "float", "base64"])
def test_embeddings_equal_hugging_face(client: openai.OpenAI, idle_server: RunningServer, model_dir: pathlib.Path,
                                       encoding_format: str | None) -> None:
    kwargs = {"encoding_format": encoding_format} if encoding_format else {}
    out = client.embeddings.create(model=MODEL_NAME, input=TEXTS, **kwargs)
    assert [d.index for d in out.data] == [0, 1, 2] and out.model == MODEL_NAME
    lengths = [len(token_ids(idle_server, text)) for text in TEXTS]
    assert out.usage.prompt_tokens == out.usage.total_tokens == sum(lengths)
    for data, text in zip(out.data, TEXTS):
        reference = hf_embedding(model_dir, token_ids(idle_server, text))
        assert torch.allclose(vector(data.embedding), reference, atol=1e-4)
    # Token ids work as input too, and `dimensions` keeps the leading ones at unit length.
    ids = token_ids(idle_server, TEXTS[0])
    short = client.embeddings.create(model=MODEL_NAME, input=[ids], dimensions=8).data[0].embedding
    assert len(short) == 8 and abs(torch.tensor(short).norm().item() - 1) < 1e-5
    expected = torch.nn.functional.normalize(hf_embedding(model_dir, ids)[:8], dim=0)
    assert torch.allclose(torch.tensor(short), expected, atol=1e-4)


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"input": []}, "input", None),
    ({"input": [10**6]}, "input", None),
    ({"input": [5] * (MAX_MODEL_LEN + 1)}, "input", "context_length_exceeded"),
    ({"input": "x", "dimensions": 10**6}, "dimensions", None),
    ({"input": "x", "dimensions": 0}, "dimensions", None),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format", None),
])
def test_bad_embedding_requests_are_400(idle_server: RunningServer, body: dict, param: str, code: str | None) -> None:
    result = idle_server.request("POST", "/v1/embeddings", {"model": MODEL_NAME, **body})
    assert_error(result, 400, param, code)
    assert_still_serving(idle_server)


def test_truncated_embedding_input(client: openai.OpenAI, idle_server: RunningServer, model_dir: pathlib.Path) -> None:
    ids = token_ids(idle_server, TEXTS[1])
    out = client.embeddings.create(model=MODEL_NAME, input=[ids], encoding_format="float",
                                   extra_body={"truncate_prompt_tokens": 3})
    assert out.usage.prompt_tokens == 3
    assert torch.allclose(torch.tensor(out.data[0].embedding), hf_embedding(model_dir, ids[-3:]), atol=1e-4)
    long = client.embeddings.create(model=MODEL_NAME, input=[[5] * (MAX_MODEL_LEN + 9)], encoding_format="float",
                                    extra_body={"truncate_prompt_tokens": -1})
    assert long.usage.prompt_tokens == MAX_MODEL_LEN


def test_an_encoder_embedding_model_served(tmp_path: pathlib.Path) -> None:
    """A BERT embedding model (mean pooling) behind /v1/embeddings and an XLM-RoBERTa cross-encoder behind
    /v1/rerank: the offline engine's numbers, through the server."""
    from pagoda.engine.encoder_fixtures import make_tiny_encoder
    from pagoda.engine.llm import LLM
    from tests.server.conftest import serve_in_thread

    bert = make_tiny_encoder(tmp_path / "bert", "bert", pooling="mean")
    want = torch.tensor(LLM(str(bert), dtype="float32").embed(TEXTS))
    with serve_in_thread([str(bert), "--served-model-name", "bge", "--dtype", "float32"]) as running:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0)
        got = client.embeddings.create(model="bge", input=TEXTS, encoding_format="float")
        torch.testing.assert_close(torch.tensor([d.embedding for d in got.data]), want, atol=1e-5, rtol=1e-5)
        assert got.usage.prompt_tokens == sum(len(token_ids(running, t)) for t in TEXTS)
        running.wait_idle()
    reranker = make_tiny_encoder(tmp_path / "reranker", "xlm_roberta_reranker")
    scores = [s.score for s in LLM(str(reranker), dtype="float32").score(TEXTS[0], TEXTS[1:])]
    with serve_in_thread([str(reranker), "--served-model-name", "rerank", "--dtype", "float32"]) as running:
        result = running.request("POST", "/v1/rerank", {"model": "rerank", "query": TEXTS[0], "documents": TEXTS[1:]})
        by_index = {r["index"]: r["relevance_score"] for r in result.json()["results"]}
        assert [by_index[i] for i in range(len(scores))] == pytest.approx(scores, abs=1e-6)
        running.wait_idle()
