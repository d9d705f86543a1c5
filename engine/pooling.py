"""What pooling requests make of a prompt's pooled output: an embedding model's vector, or a
sequence classifier's per-label logits (see models/classifier.py), turned into vLLM's
classify probabilities and score/rerank relevance.

A classifier with one label is a cross-encoder: it reads a (query, document) pair as one prompt,
the tokenizer's pair encoding, and its relevance is the label's sigmoid. An embedding model is a
bi-encoder: each text is embedded alone and relevance is the cosine of the two embeddings.
"""

from __future__ import annotations

import math
from typing import Any

from pagoda.engine.models.classifier import num_labels


def label_probs(logits: list[float]) -> list[float]:
    """A classifier's output as probabilities: the sigmoid of a single label, else the softmax."""
    if len(logits) == 1:
        return [1.0 / (1.0 + math.exp(-logits[0]))]
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


def label_names(hf_config: dict[str, Any]) -> list[str]:
    """The labels' names (config.json's id2label, by index), or LABEL_i as transformers names them."""
    names = hf_config.get("id2label") or {}
    return [str(names.get(str(i), names.get(i, f"LABEL_{i}"))) for i in range(num_labels(hf_config))]


def cosine(a: list[float], b: list[float]) -> float:
    norm = math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b)) / norm if norm else 0.0


def pairs(text_1: str | list[str], text_2: str | list[str]) -> list[tuple[str, str]]:
    """vLLM's score pairing: one text against each of a list, or two lists of equal length zipped."""
    firsts = [text_1] if isinstance(text_1, str) else list(text_1)
    seconds = [text_2] if isinstance(text_2, str) else list(text_2)
    if not firsts or not seconds:
        raise ValueError("text_1 and text_2 must not be empty")
    if len(firsts) == 1:
        firsts = firsts * len(seconds)
    if len(firsts) != len(seconds):
        raise ValueError(f"text_1 has {len(firsts)} texts and text_2 {len(seconds)}: give one text_1, "
                         "or as many as text_2")
    return list(zip(firsts, seconds))


def score_texts(pairs_: list[tuple[str, str]], cross_encoder: bool) -> list[tuple[str, str]] | list[str]:
    """What a score or rerank request runs: each pair, read as one prompt by a cross-encoder; else each
    distinct text once, to be embedded."""
    return pairs_ if cross_encoder else list(dict.fromkeys(text for pair in pairs_ for text in pair))


def relevances(pairs_: list[tuple[str, str]], texts: list[tuple[str, str]] | list[str], pooled: list[list[float]],
               cross_encoder: bool) -> list[float]:
    """Each pair's relevance from the pooled outputs of `score_texts`: the label's sigmoid of a
    cross-encoder's pair, or the cosine of the pair's two embeddings."""
    if cross_encoder:
        return [label_probs(row)[0] for row in pooled]
    vectors = dict(zip(texts, pooled))
    return [cosine(vectors[a], vectors[b]) for a, b in pairs_]
