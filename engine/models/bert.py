"""Bidirectional encoders: BERT and XLM-RoBERTa embedding models (bge, e5, gte, all-MiniLM, bge-m3) and
cross-encoders (BERT's ms-marco-MiniLM, XLM-RoBERTa's bge-reranker-base/large/v2-m3).

Post-norm layers: attention with biases, then LayerNorm(x + attention), a GELU MLP, then
LayerNorm(x + MLP); learned absolute positions (RoBERTa's counted from padding_idx + 1) and token
types (a pair's second segment, after its first separator, is BERT's type 1). Every token sees the
whole prompt: the engine runs an encoder's prompt in one step with each token's key limit at the
prompt's end (the same per-token limits that let Gemma 3's image tokens see their whole image), so
the paged attention backends and kernels serve it as they are.
Nothing is generated; an embedding is the prompt's pooled hidden state, [CLS]/<s> or the mean over
its tokens as the checkpoint's sentence-transformers Pooling module says; a cross-encoder's score is
its classification head over <s>.
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn

from pagoda.engine.attention import AttentionMetadata
from pagoda.engine.layers.attention import Attention
from pagoda.engine.layers.embedding import VocabParallelEmbedding
from pagoda.engine.layers.linear import ColumnParallelLinear, QKVParallelLinear, ReplicatedLinear, RowParallelLinear
from pagoda.engine.layers.norm import LayerNorm
from pagoda.engine.model_config import ModelConfig, roberta_position_offset
from pagoda.engine.models.classifier import num_labels

# GELU variants of config.json's hidden_act, as torch computes them.
_GELU = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
# Checkpoint names of a layer's parts -> ours (shard ids of the fused q/k/v).
_LAYER_PARTS = {"attention.self.query": ("qkv_proj", "q"), "attention.self.key": ("qkv_proj", "k"),
                "attention.self.value": ("qkv_proj", "v"), "attention.output.dense": ("o_proj", None),
                "attention.output.LayerNorm": ("attention_norm", None), "intermediate.dense": ("up_proj", None),
                "output.dense": ("down_proj", None), "output.LayerNorm": ("output_norm", None)}
_LAYER = re.compile(r"^encoder\.layer\.(?P<i>\d+)\.(?P<part>.+)\.(?P<leaf>weight|bias)$")


def separator_id(cfg: ModelConfig) -> int | None:
    """The id of the tokenizer's separator ([SEP], RoBERTa's </s>), which ends a pair's first segment."""
    settings, vocab = cfg.path / "tokenizer_config.json", cfg.path / "tokenizer.json"
    if not settings.exists() or not vocab.exists():
        return None
    sep = json.loads(settings.read_text()).get("sep_token")
    sep = sep.get("content") if isinstance(sep, dict) else sep
    return None if sep is None else Tokenizer.from_file(str(vocab)).token_to_id(sep)


def sentence_pooling(cfg: ModelConfig) -> str:
    """The pooling a sentence-transformers checkpoint declares (its Pooling module's config), else [CLS]."""
    modules = cfg.path / "modules.json"
    if not modules.exists():
        return "cls"
    for module in json.loads(modules.read_text()):
        if module.get("type", "").endswith("Pooling"):
            pooling = json.loads((cfg.path / module["path"] / "config.json").read_text())
            modes = [mode for mode, key in (("cls", "pooling_mode_cls_token"), ("mean", "pooling_mode_mean_tokens"),
                                            ("last", "pooling_mode_lasttoken")) if pooling.get(key)]
            if len(modes) != 1:
                raise ValueError(f"sentence-transformers pooling {pooling} is not supported (supported: one of "
                                 "cls, mean or last token)")
            return modes[0]
    return "cls"


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden, eps = cfg.hidden_size, float(cfg.hf_config.get("layer_norm_eps", 1e-12))
        act = str(cfg.hf_config.get("hidden_act", "gelu"))
        if act not in _GELU:
            raise ValueError(f"hidden_act {act!r} is not supported for encoders (supported: {', '.join(_GELU)})")
        self.approximate = _GELU[act]
        self.qkv_proj = QKVParallelLinear(hidden, cfg.head_dim, cfg.num_heads, cfg.num_heads, bias=True)
        self.q_size = self.qkv_proj.num_heads * cfg.head_dim
        self.attn = Attention(self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads, cfg.head_dim)
        self.o_proj = RowParallelLinear(hidden, hidden, bias=True)
        self.attention_norm = LayerNorm(hidden, eps)
        self.up_proj = ColumnParallelLinear(hidden, cfg.intermediate_size, bias=True)
        self.down_proj = RowParallelLinear(cfg.intermediate_size, hidden, bias=True)
        self.output_norm = LayerNorm(hidden, eps)

    def forward(self, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split([self.q_size] * 3, dim=-1)
        x = self.attention_norm(self.o_proj(self.attn(q, k, v.contiguous(), meta)) + x)
        up = nn.functional.gelu(self.up_proj(x), approximate=self.approximate)
        return self.output_norm(self.down_proj(up) + x)


class BertModel(nn.Module):
    """An embedding model: the encoder's pooled output (see the module docstring)."""

    generates = False
    lm_head = None
    # What checkpoints saved from a task model put before the encoder's names.
    _PREFIXES = ("bert.", "roberta.", "model.")
    # The pooler (dense and tanh over [CLS]) transformers saves with an encoder: embeddings do not use it.
    ignored_checkpoint_prefixes = tuple(f"{prefix}pooler." for prefix in ("", *_PREFIXES))

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        hf = cfg.hf_config
        self.position_offset = roberta_position_offset(hf, cfg.architecture)
        self.word_embeddings = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = VocabParallelEmbedding(int(hf["max_position_embeddings"]), cfg.hidden_size)
        self.token_type_embeddings = VocabParallelEmbedding(int(hf.get("type_vocab_size", 2)), cfg.hidden_size)
        self.embedding_norm = LayerNorm(cfg.hidden_size, float(hf.get("layer_norm_eps", 1e-12)))
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_layers))
        self.pooling = sentence_pooling(cfg)
        # BERT's pairs type their second segment 1: the tokens after the first separator.
        self.sep_id = separator_id(cfg) if int(hf.get("type_vocab_size", 2)) > 1 else None

    def token_types(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """0 up to a prompt's first separator, 1 after it (a pair's second segment, as BERT's tokenizer
        types it). The step holds whole prompts, each starting at position 0: a token's prompt starts
        `position` rows before it, so separators are counted within each prompt without a loop."""
        if self.sep_id is None:
            return torch.zeros_like(input_ids)
        seps = (input_ids == self.sep_id).long()
        before = torch.cumsum(seps, 0) - seps  # separators strictly before each row, over the whole step
        start = torch.arange(input_ids.shape[0], device=input_ids.device) - positions
        return (before - before[start]).clamp(max=1)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Final hidden states of every token."""
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions + self.position_offset)
             + self.token_type_embeddings(self.token_types(input_ids, positions)))
        x = self.embedding_norm(x)
        for layer in self.layers:
            x = layer(x, meta)
        return x

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        for prefix in self._PREFIXES:
            name = name.removeprefix(prefix)
        if name.startswith("embeddings."):
            return name.removeprefix("embeddings.").replace("LayerNorm", "embedding_norm"), None
        if match := _LAYER.match(name):
            ours, shard = _LAYER_PARTS.get(match["part"], (match["part"], None))
            return f"layers.{match['i']}.{ours}.{match['leaf']}", shard
        return name, None


class XLMRobertaModel(BertModel):
    """XLM-RoBERTa (bge-m3, multilingual-e5) and RoBERTa embedding models: positions from padding_idx + 1."""


class _EncoderClassifier(BertModel):
    """A cross-encoder: the first token's hidden state through dense, tanh and a projection to one logit
    per label (one for rerankers, whose relevance is its sigmoid); `_HEAD` maps the checkpoint's names of
    the two onto ours."""

    classifies = True
    _HEAD: dict[str, str] = {}

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.pooling = "cls"
        self.dense = ReplicatedLinear(cfg.hidden_size, cfg.hidden_size, bias=True)
        self.out_proj = ReplicatedLinear(cfg.hidden_size, num_labels(cfg.hf_config), bias=True)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out_proj(torch.tanh(self.dense(hidden))).float()

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        for theirs, ours in self._HEAD.items():
            if name.startswith(theirs):
                return ours + name.removeprefix(theirs), None
        return super().checkpoint_target(name)


class BertForSequenceClassification(_EncoderClassifier):
    """BERT's cross-encoders (cross-encoder/ms-marco-MiniLM): its pooler, then `classifier`; the pair's
    segments typed 0 and 1."""

    ignored_checkpoint_prefixes = ()  # the pooler is the head here
    _HEAD = {"bert.pooler.dense.": "dense.", "pooler.dense.": "dense.", "classifier.": "out_proj."}


class XLMRobertaForSequenceClassification(_EncoderClassifier):
    """XLM-RoBERTa's cross-encoders (bge-reranker-base/large/v2-m3): the `classifier` head over <s>."""

    _HEAD = {"classifier.dense.": "dense.", "classifier.out_proj.": "out_proj."}
