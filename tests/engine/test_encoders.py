"""Bidirectional encoders (BERT, XLM-RoBERTa embedding models; an XLM-RoBERTa cross-encoder) against
transformers on the same weights: sentence-transformers' pooling of transformers' hidden states,
and the cross-encoder's own logits."""

from __future__ import annotations

import pathlib

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from pagoda.engine.encoder_fixtures import MAX_TOKENS, make_tiny_encoder
from pagoda.engine.llm import LLM

TEXTS = ["Hello, my name is Pagoda.", "The quick brown fox jumps over the lazy dog. Once upon a time there was",
         "東京 🚀", "Hello, my name is Pagoda, and I serve language models."]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory):
    """encoder(arch, pooling) -> model directory, built once per module."""
    built: dict[tuple[str, str], pathlib.Path] = {}

    def make(arch: str, pooling: str = "cls") -> pathlib.Path:
        if (arch, pooling) not in built:
            built[arch, pooling] = make_tiny_encoder(tmp_path_factory.mktemp(f"{arch}-{pooling}"), arch, pooling=pooling)
        return built[arch, pooling]

    return make


@torch.inference_mode()
def _reference_embeddings(path: pathlib.Path, pooling: str) -> torch.Tensor:
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    vectors = []
    for text in TEXTS:
        hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
        vectors.append(torch.nn.functional.normalize(hidden[0] if pooling == "cls" else hidden.mean(0), dim=-1))
    return torch.stack(vectors)


@pytest.mark.parametrize(("arch", "pooling", "options"), [
    ("bert", "cls", {}), ("bert", "mean", {"tensor_parallel_size": 2}), ("xlm_roberta", "mean", {}),
    ("xlm_roberta", "cls", {"block_size": 4, "max_num_seqs": 2}),
], ids=str)
def test_embeddings_match_transformers(encoder, arch: str, pooling: str, options: dict) -> None:
    """Prompts of different lengths batched together (and over small blocks, two at a time), each token
    seeing the whole prompt, pooled as the sentence-transformers config says."""
    path = encoder(arch, pooling)
    llm = LLM(str(path), dtype="float32", **options)
    try:
        ours = torch.tensor(llm.embed(TEXTS))
    finally:
        llm.engine.shutdown()
    torch.testing.assert_close(ours, _reference_embeddings(path, pooling), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["bert_reranker", "xlm_roberta_reranker"])
def test_cross_encoder_scores_match_transformers(encoder, arch: str) -> None:
    """Rerankers: each (query, document) pair read as one prompt (BERT's second segment typed 1), its one
    logit's sigmoid; a step of several pairs."""
    path = encoder(arch)
    llm = LLM(str(path), dtype="float32")
    scores = [s.score for s in llm.score(TEXTS[0], TEXTS[1:])]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.inference_mode():
        logits = [model(**tokenizer(TEXTS[0], doc, return_tensors="pt")).logits[0, 0] for doc in TEXTS[1:]]
    assert scores == pytest.approx([torch.sigmoid(x).item() for x in logits], abs=1e-5)


def test_an_encoder_generates_nothing_and_needs_a_step_for_a_whole_prompt(encoder) -> None:
    path = encoder("bert")
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        LLM(str(path), dtype="float32", max_num_batched_tokens=MAX_TOKENS // 2)
    llm = LLM(str(path), dtype="float32")
    assert llm.engine.model_config.max_model_len == MAX_TOKENS
    assert not llm.engine.block_manager.enable_prefix_caching, "an encoder's KV depends on the tokens after it"
    with pytest.raises(ValueError, match="embeddings"):
        llm.generate("Hello")


def test_an_encoder_keeps_only_a_step_of_kv_cache(encoder) -> None:
    """Its blocks hold one step (a prompt's KV is needed only in the step it runs in): many prompts
    through a pool of a 128-token step's blocks, three at a time, each embedding as transformers'."""
    path = encoder("bert")
    llm = LLM(str(path), dtype="float32", max_num_batched_tokens=MAX_TOKENS, max_num_seqs=3, block_size=4)
    assert llm.engine.block_manager.num_usable <= MAX_TOKENS // 4 + 3 + 1
    torch.testing.assert_close(torch.tensor(llm.embed(TEXTS * 5)), _reference_embeddings(path, "cls").repeat(5, 1),
                               atol=1e-5, rtol=1e-5)
