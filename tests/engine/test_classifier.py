"""Sequence classifiers (`*ForSequenceClassification`: reward models, classifiers, cross-encoder
rerankers): label probabilities and pair scores equal transformers' on the same weights, under
tensor parallelism too; embedding models score pairs by cosine; each model refuses the other tasks."""

from __future__ import annotations

import functools
import pathlib

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pagoda.engine.fixtures import make_tiny_classifier
from pagoda.engine.llm import LLM

LABELS = ("negative", "neutral", "positive")
TEXTS = ["Hello, my name is", "The capital of France is", "def fib(n):"]
QUERY, DOCS = "what is tea", ["tea is a drink made from leaves", "the capital of France is Paris", "tea"]


@pytest.fixture(scope="session")
def classifier(tiny_model, tmp_path_factory):
    """classifier(arch, labels) -> a classifier checkpoint made from the arch's fixture."""
    @functools.cache
    def make(arch: str, labels: tuple[str, ...]) -> pathlib.Path:
        return make_tiny_classifier(tiny_model(arch), tmp_path_factory.mktemp(f"cls-{arch}") / "model", labels)

    return make


@torch.inference_mode()
def hf_logits(path: pathlib.Path, token_ids: list[int]) -> torch.Tensor:
    model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32).eval()
    return model(torch.tensor([token_ids])).logits[0]


@pytest.mark.parametrize(("arch", "tp"), [("llama", 1), ("qwen3", 1), ("qwen2", 2)])
def test_classify_equals_transformers(classifier, arch: str, tp: int) -> None:
    path = classifier(arch, LABELS)
    llm = LLM(str(path), dtype="float32", tensor_parallel_size=tp)
    try:
        outputs = llm.classify(TEXTS)
        tokenizer = AutoTokenizer.from_pretrained(path)
        for text, out in zip(TEXTS, outputs):
            want = torch.softmax(hf_logits(path, tokenizer(text)["input_ids"]), -1)
            torch.testing.assert_close(torch.tensor(out.probs), want, rtol=1e-5, atol=1e-6)
            assert out.labels == list(LABELS) and out.label == LABELS[int(want.argmax())]
    finally:
        llm.engine.shutdown()


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_a_one_label_classifier_scores_pairs_as_a_cross_encoder(classifier, arch: str) -> None:
    """The pair is one prompt, the tokenizer's pair encoding; the score is the label's sigmoid."""
    path = classifier(arch, ("relevant",))
    llm = LLM(str(path), dtype="float32")
    try:
        scores = [s.score for s in llm.score(QUERY, DOCS)]
        tokenizer = AutoTokenizer.from_pretrained(path)
        want = [float(torch.sigmoid(hf_logits(path, tokenizer(QUERY, text_pair=d)["input_ids"]))[0]) for d in DOCS]
        assert scores == pytest.approx(want, rel=1e-5)
        assert [s.score for s in llm.score([QUERY, QUERY], DOCS[:2])] == pytest.approx(want[:2], rel=1e-5)
        assert llm.classify(QUERY)[0].probs[0] == pytest.approx(
            float(torch.sigmoid(hf_logits(path, tokenizer(QUERY)["input_ids"]))[0]), rel=1e-5)
    finally:
        llm.engine.shutdown()


def test_an_embedding_model_scores_pairs_by_cosine(tiny_model) -> None:
    llm = LLM(str(tiny_model("llama")), dtype="float32")
    try:
        scores = [s.score for s in llm.score(QUERY, DOCS)]
        query, *docs = (torch.tensor(v) for v in llm.embed([QUERY, *DOCS]))
        assert scores == pytest.approx([float(query @ d) for d in docs], rel=1e-5)
    finally:
        llm.engine.shutdown()


def test_each_model_refuses_the_tasks_it_cannot_serve(classifier, tiny_model) -> None:
    multi = LLM(str(classifier("llama", LABELS)), dtype="float32")
    with pytest.raises(ValueError, match="is a classifier: it serves classify, score and rerank, not embeddings"):
        multi.embed(TEXTS)
    with pytest.raises(ValueError, match="has 3 labels: scoring pairs needs a one-label classifier"):
        multi.score(QUERY, DOCS)
    with pytest.raises(ValueError, match="it serves classify, score and rerank only"):
        multi.generate(TEXTS)
    with pytest.raises(ValueError, match="text_1 has 2 texts and text_2 3"):
        multi.score([QUERY, QUERY], DOCS)
    multi.engine.shutdown()
    generative = LLM(str(tiny_model("llama")), dtype="float32")
    with pytest.raises(ValueError, match="is not a sequence classifier"):
        generative.classify(TEXTS)
    generative.engine.shutdown()
