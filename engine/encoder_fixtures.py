"""Random-weight encoder checkpoints (BERT, XLM-RoBERTa, an XLM-RoBERTa cross-encoder), written by
transformers with the fixture tokenizer and, for embedding models, the sentence-transformers files
that say how a prompt is pooled."""

from __future__ import annotations

import pathlib

import torch
from tokenizers import processors
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from pagoda.engine.fixtures import (BOS_TOKEN, BOS_TOKEN_ID, EOS_TOKEN, EOS_TOKEN_ID, MODEL_VOCAB_SIZE, PAD_TOKEN,
                                    PAD_TOKEN_ID, TOKENIZER_VOCAB_SIZE, _write_json, build_tokenizer)

# name -> (model_type, architecture)
ENCODERS = {"bert": ("bert", "BertModel"), "xlm_roberta": ("xlm-roberta", "XLMRobertaModel"),
            "bert_reranker": ("bert", "BertForSequenceClassification"),
            "xlm_roberta_reranker": ("xlm-roberta", "XLMRobertaForSequenceClassification")}
MAX_TOKENS = 128  # the encoders' context


def _write_tokenizer(out_dir: pathlib.Path, roberta: bool, max_tokens: int) -> None:
    """The fixture vocabulary with BERT's or RoBERTa's framing: <s> A </s>, pairs <s> A </s> B </s> (BERT,
    B typed 1) or <s> A </s></s> B </s> (RoBERTa); <s> and </s> stand for [CLS] and [SEP]."""
    tokenizer = build_tokenizer("llama")
    pair = (f"{BOS_TOKEN} $A {EOS_TOKEN} {EOS_TOKEN} $B {EOS_TOKEN}" if roberta
            else f"{BOS_TOKEN} $A {EOS_TOKEN} $B:1 {EOS_TOKEN}:1")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A {EOS_TOKEN}", pair=pair,
        special_tokens=[(BOS_TOKEN, BOS_TOKEN_ID), (EOS_TOKEN, EOS_TOKEN_ID)])
    tokenizer.save(str(out_dir / "tokenizer.json"), pretty=True)
    _write_json(out_dir / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN,
        "cls_token": BOS_TOKEN, "sep_token": EOS_TOKEN, "pad_token": PAD_TOKEN, "unk_token": None,
        "model_max_length": max_tokens, "clean_up_tokenization_spaces": False,
        # BERT's tokenizers hand the model each token's segment; RoBERTa's have one.
        "model_input_names": ["input_ids", "attention_mask"] if roberta else
                             ["input_ids", "token_type_ids", "attention_mask"]})


def _write_pooling(out_dir: pathlib.Path, hidden: int, pooling: str) -> None:
    """sentence-transformers' modules: the transformer, its Pooling and a Normalize."""
    _write_json(out_dir / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}])
    (out_dir / "1_Pooling").mkdir()
    _write_json(out_dir / "1_Pooling" / "config.json", {
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_lasttoken": False, "include_prompt": True})
    (out_dir / "2_Normalize").mkdir()


def make_tiny_encoder(out_dir: str | pathlib.Path, arch: str = "bert", *, pooling: str = "cls", seed: int = 0,
                      max_tokens: int = MAX_TOKENS, **shape: int) -> pathlib.Path:
    """A random-weight encoder of `arch` (see ENCODERS) in `out_dir`, pooled by `pooling` ("cls" or
    "mean") when it is an embedding model, of `max_tokens` context and `shape` (hidden_size, layers...,
    tiny by default); LayerNorms and biases random too, so none can be skipped."""
    out_dir = pathlib.Path(out_dir)
    model_type, architecture = ENCODERS[arch]
    roberta = model_type == "xlm-roberta"
    shape = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128, **shape}
    # RoBERTa's positions start past the padding index, so its table is that much longer.
    config = AutoConfig.for_model(
        model_type, vocab_size=MODEL_VOCAB_SIZE, **shape,
        max_position_embeddings=max_tokens + (PAD_TOKEN_ID + 1 if roberta else 0),
        type_vocab_size=1 if roberta else 2, pad_token_id=PAD_TOKEN_ID, bos_token_id=BOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID, initializer_range=0.1, architectures=[architecture], num_labels=1)
    torch.manual_seed(seed)
    factory = AutoModelForSequenceClassification if architecture.endswith("Classification") else AutoModel
    model = factory.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.1)
            elif "LayerNorm" in name:
                param.uniform_(0.5, 1.5)
        model.get_input_embeddings().weight[TOKENIZER_VOCAB_SIZE:] = 0.0
    model.save_pretrained(out_dir)
    _write_tokenizer(out_dir, roberta, max_tokens)
    if factory is AutoModel:
        _write_pooling(out_dir, config.hidden_size, pooling)
    return out_dir
