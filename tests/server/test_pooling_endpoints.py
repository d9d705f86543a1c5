"""vLLM's pooling endpoints on a real server: POST /classify (label probabilities), /score and /v1/score
(pair relevance) and /rerank, /v1/rerank, /v2/rerank (Jina's and Cohere's API), against transformers
on the same weights: a cross-encoder and a 3-label classifier, and an embedding (bi-encoder) model."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Iterator

import pytest
import torch
from transformers import AutoTokenizer

from pagoda.engine.fixtures import make_tiny_classifier
from tests.engine.test_classifier import DOCS, LABELS, QUERY, TEXTS, hf_logits
from tests.server.conftest import MODEL_NAME, RunningServer, serve_in_thread
from tests.server.test_errors import assert_error, assert_still_serving


@pytest.fixture(scope="module")
def reranker(tiny_model, tmp_path_factory) -> Iterator[tuple[RunningServer, pathlib.Path]]:
    path = make_tiny_classifier(tiny_model("qwen3"), tmp_path_factory.mktemp("reranker") / "model", ("relevant",))
    with serve_in_thread([str(path), "--served-model-name", "reranker"]) as running:
        yield running, path


@pytest.fixture(scope="module")
def sentiment(tiny_model, tmp_path_factory) -> Iterator[tuple[RunningServer, pathlib.Path]]:
    path = make_tiny_classifier(tiny_model("llama"), tmp_path_factory.mktemp("sentiment") / "model", LABELS)
    with serve_in_thread([str(path), "--served-model-name", "sentiment"]) as running:
        yield running, path


def test_classify_equals_transformers(sentiment) -> None:
    server, path = sentiment
    result = server.request("POST", "/classify", {"model": "sentiment", "input": TEXTS})
    assert result.status == 200, result.body
    body = result.json()
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert body["model"] == "sentiment" and body["object"] == "list" and body["id"].startswith("classify-")
    for i, (text, item) in enumerate(zip(TEXTS, body["data"])):
        want = torch.softmax(hf_logits(path, tokenizer(text)["input_ids"]), -1)
        assert item["index"] == i and item["num_classes"] == 3 and item["label"] == LABELS[int(want.argmax())]
        assert item["probs"] == pytest.approx(want.tolist(), rel=1e-5)
    assert body["usage"]["prompt_tokens"] == sum(len(tokenizer(t)["input_ids"]) for t in TEXTS)


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_rerank_orders_documents_as_the_cross_encoder_scores_them(reranker, path: str) -> None:
    server, model = reranker
    tokenizer = AutoTokenizer.from_pretrained(model)
    want = [float(torch.sigmoid(hf_logits(model, tokenizer(QUERY, text_pair=d)["input_ids"]))[0]) for d in DOCS]
    result = server.request("POST", path, {"model": "reranker", "query": QUERY, "documents": DOCS, "top_n": 2})
    assert result.status == 200, result.body
    body = result.json()
    best = sorted(range(len(DOCS)), key=lambda i: -want[i])[:2]
    assert [r["index"] for r in body["results"]] == best
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx([want[i] for i in best], rel=1e-5)
    assert [r["document"]["text"] for r in body["results"]] == [DOCS[i] for i in best]
    assert body["usage"]["total_tokens"] == sum(len(tokenizer(QUERY, text_pair=d)["input_ids"]) for d in DOCS)
    bare = server.request("POST", path, {"query": QUERY, "documents": DOCS, "return_documents": False}).json()
    assert len(bare["results"]) == 3 and all(r["document"] is None for r in bare["results"])


@pytest.mark.parametrize("path", ["/score", "/v1/score"])
def test_score_pairs_one_text_against_many_or_two_lists(reranker, path: str) -> None:
    server, model = reranker
    tokenizer = AutoTokenizer.from_pretrained(model)

    def want(a: str, b: str) -> float:
        return float(torch.sigmoid(hf_logits(model, tokenizer(a, text_pair=b)["input_ids"]))[0])

    one = server.request("POST", path, {"model": "reranker", "text_1": QUERY, "text_2": DOCS}).json()
    assert [d["index"] for d in one["data"]] == [0, 1, 2] and all(d["object"] == "score" for d in one["data"])
    assert [d["score"] for d in one["data"]] == pytest.approx([want(QUERY, d) for d in DOCS], rel=1e-5)
    zipped = server.request("POST", path, {"text_1": DOCS[:2], "text_2": [QUERY, DOCS[2]]}).json()
    assert [d["score"] for d in zipped["data"]] == pytest.approx([want(DOCS[0], QUERY), want(DOCS[1], DOCS[2])],
                                                                 rel=1e-5)


def test_an_embedding_model_scores_and_reranks_by_cosine(server: RunningServer) -> None:
    """The shared server's generative model embeds each text; relevance is the embeddings' cosine."""
    embed = server.request("POST", "/v1/embeddings", {"model": MODEL_NAME, "input": [QUERY, *DOCS]}).json()
    query, *docs = (torch.tensor(d["embedding"]) for d in embed["data"])
    want = [float(query @ d) for d in docs]
    score = server.request("POST", "/v1/score", {"model": MODEL_NAME, "text_1": QUERY, "text_2": DOCS}).json()
    assert [d["score"] for d in score["data"]] == pytest.approx(want, rel=1e-4)
    rerank = server.request("POST", "/v1/rerank", {"model": MODEL_NAME, "query": QUERY, "documents": DOCS}).json()
    assert [r["index"] for r in rerank["results"]] == sorted(range(3), key=lambda i: -want[i])


def test_each_endpoint_refuses_a_model_that_does_not_serve_it(server: RunningServer, sentiment, reranker) -> None:
    classifier, _ = sentiment
    cross_encoder, _ = reranker
    error = assert_error(server.request("POST", "/classify", {"input": "x"}), 400, "model")
    assert "not a sequence classifier" in error["message"]
    error = assert_error(classifier.request("POST", "/v1/embeddings", {"input": "x"}), 400, "model")
    assert "is a classifier" in error["message"]
    error = assert_error(classifier.request("POST", "/v1/rerank", {"query": "q", "documents": ["d"]}), 400, "model")
    assert "has 3 labels" in error["message"]
    error = assert_error(cross_encoder.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 2}), 400,
                         "prompt")
    assert "serves classify, score and rerank only" in error["message"]
    assert_error(cross_encoder.request("POST", "/v1/score", {"text_1": ["a", "b"], "text_2": DOCS}), 400, "text_1")
    assert_error(cross_encoder.request("POST", "/v1/rerank", {"query": "q", "documents": []}), 400, "documents")
    assert_error(cross_encoder.request("POST", "/classify", {"model": "other", "input": "x"}), 404, "model")
    assert_error(server.request("POST", "/classify", {"input": "x"}, auth=False), 401)
    assert_still_serving(server)
    assert not math.isnan(cross_encoder.request("POST", "/score", {"text_1": "a", "text_2": "b"}).json()["data"][0]["score"])
