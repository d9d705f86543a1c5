"""The fixture tool writes real, loadable, deterministic Hugging Face model directories."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoTokenizer

from pagoda.cli import main
from pagoda.engine.fixtures import FIXTURE_ARCHS, make_tiny_model
from pagoda.engine.model_config import load_model_config

TEXT = "Hello, my name is Pagoda. Ça coûte trois euros. 東京 🚀"


@pytest.mark.parametrize("arch", FIXTURE_ARCHS)
def test_tokenizer_files_agree_with_transformers(tiny_model, arch: str) -> None:
    path = tiny_model(arch)
    raw = Tokenizer.from_file(str(path / "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(str(path))
    assert hf.encode(TEXT) == raw.encode(TEXT).ids
    assert hf.decode(hf.encode(TEXT), skip_special_tokens=True) == TEXT
    rendered = hf.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|start|>assistant" if arch == "gpt_oss" else "<|im_start|>assistant\n")


@pytest.mark.parametrize("arch", FIXTURE_ARCHS)
def test_config_is_hub_style_and_read_by_both(tiny_model, arch: str) -> None:
    path = tiny_model(arch)
    cfg = json.loads((path / "config.json").read_text())
    if arch.startswith("gemma4"):  # released with transformers 5: rope nested by layer kind, global heads named
        assert set(cfg["rope_parameters"]) == {"sliding_attention", "full_attention"} and "global_head_dim" in cfg
        assert "per_layer_config" not in cfg
    elif arch == "olmo_hybrid":  # released with transformers 5, without rotary
        assert cfg["rope_parameters"]["rope_theta"] is None
    elif arch == "mimo_v2_flash":  # its rope nested by layer kind
        assert set(cfg["rope_parameters"]) == {"sliding_attention", "full_attention"}
    else:
        assert "rope_theta" in cfg and "rope_parameters" not in cfg
    assert AutoConfig.from_pretrained(str(path)).architectures == cfg["architectures"]
    ours = load_model_config(path, "auto", None)
    assert ours.architecture == cfg["architectures"][0]
    if arch == "llama3":
        assert ours.rope.scaling_type == "llama3"
    if arch == "qwen3":
        assert ours.head_dim == 32 != cfg["hidden_size"] // cfg["num_attention_heads"]


def test_sharded_and_deterministic(tmp_path) -> None:
    a = make_tiny_model(tmp_path / "a", "mistral", sharded=True)
    b = make_tiny_model(tmp_path / "b", "mistral", sharded=True)
    index = json.loads((a / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 2 and not (a / "model.safetensors").exists()
    for name in [*shards, "config.json", "tokenizer.json", "tokenizer_config.json"]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_cli_writes_a_model(tmp_path, capsys) -> None:
    assert main(["make-tiny-model", str(tmp_path / "m"), "--arch", "qwen3", "--tie-word-embeddings"]) == 0
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is True and cfg["architectures"] == ["Qwen3ForCausalLM"]


def test_unknown_arch_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="choose one of"):
        make_tiny_model(tmp_path / "x", "gpt2")
