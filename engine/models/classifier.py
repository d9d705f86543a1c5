"""Sequence classifiers on the decoder families (`*ForSequenceClassification`): reward models,
classifiers, and decoder cross-encoders that score a (query, document) pair (Qwen3-Reranker's
seq-cls conversion, bge-reranker-v2-gemma style). The decoder's last token's final hidden state
goes through a `score` head of one row per label: transformers' pooling for these models.
"""

from __future__ import annotations

import torch
from torch import nn

from pagoda.engine.layers.linear import ReplicatedLinear
from pagoda.engine.model_config import ModelConfig
from pagoda.engine.models.llama import LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM


def num_labels(hf_config: dict) -> int:
    """transformers' rule: id2label's size when given, else num_labels, else 2."""
    labels = hf_config.get("id2label")
    return len(labels) if labels else int(hf_config.get("num_labels", 2))


class _SequenceClassifier:
    """No LM head: a `score` head whose logits are what a request gets (see `pool`)."""

    generates = False
    classifies = True

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)  # type: ignore[call-arg]
        self.score = ReplicatedLinear(cfg.hidden_size, num_labels(cfg.hf_config))

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """Per-label logits (fp32) of the last tokens' hidden states [N, H]."""
        return self.score(hidden).float()


class LlamaForSequenceClassification(_SequenceClassifier, LlamaForCausalLM):
    pass


class Qwen2ForSequenceClassification(_SequenceClassifier, Qwen2ForCausalLM):
    pass


class Qwen3ForSequenceClassification(_SequenceClassifier, Qwen3ForCausalLM):
    pass


def pool_rows(hidden: torch.Tensor, pooling: str) -> torch.Tensor:
    """One prompt's pooled hidden state from its rows [n, H] of a step: the last token's (decoders, whose
    last chunk this is), the first's (`cls`: BERT's [CLS], RoBERTa's <s>), or the mean of all (`mean`,
    an encoder's whole prompt)."""
    if pooling == "mean":
        return hidden.float().mean(dim=0).to(hidden.dtype)
    return hidden[0] if pooling == "cls" else hidden[-1]


def embedding_pool(hidden: torch.Tensor) -> torch.Tensor:
    """Embedding models' pooling: the last token's final hidden state at unit length (fp32)."""
    return nn.functional.normalize(hidden.float(), dim=-1)
