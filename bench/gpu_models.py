"""Random-weight bf16 checkpoints shaped like the models the GPU benchmarks are compared on.

No hub is reachable from the device machine, so the shapes are written out
here (from the public config.json of each model) and the checkpoints are
built by the engine's own fixture writer: real transformers checkpoints that
pagoda and Hugging Face load identically.
"""

from __future__ import annotations

import pathlib
from typing import Any

from pagoda.engine.fixtures import make_tiny_model

# name -> (fixture arch, config overrides)
MODEL_SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen3-0.6b": ("qwen3", dict(
        hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    )),
    "llama-3.2-1b": ("llama3", dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        rms_norm_eps=1e-5, tie_word_embeddings=True,
    )),
    # Qwen3-30B-A3B's layers (128 experts, top 8), 8 of its 48: 5.6B parameters, 11 GB in bf16,
    # so the checkpoint is written in a minute and HF's runs fit beside it. Not in the default set.
    "qwen3-30b-a3b-8l": ("qwen3_moe", dict(
        hidden_size=2048, intermediate_size=6144, num_hidden_layers=8, num_attention_heads=32,
        num_key_value_heads=4, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
        num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768, norm_topk_prob=True,
        mlp_only_layers=[], rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )),
    # gpt-oss-20b's layers (attention sinks, window 128 every other layer, 32 biased experts, top 4), 8 of its
    # 24: 7.7B parameters, 15 GB in bf16 (the experts full precision: random weights have no MXFP4 stacks).
    "gpt-oss-20b-8l": ("gpt_oss", dict(
        hidden_size=2880, intermediate_size=2880, num_hidden_layers=8, num_attention_heads=64,
        num_key_value_heads=8, head_dim=64, vocab_size=201088, max_position_embeddings=131072,
        num_local_experts=32, num_experts_per_tok=4, sliding_window=128, swiglu_limit=7.0,
        rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0,
                         "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 4096},
        rms_norm_eps=1e-5, tie_word_embeddings=False,
    )),
}
# The comparison models; the others run when named.
DEFAULT_MODELS = ("qwen3-0.6b", "llama-3.2-1b")


def build_model_dir(name: str, out_dir: pathlib.Path) -> pathlib.Path:
    arch, overrides = MODEL_SHAPES[name]
    return make_tiny_model(out_dir, arch, dtype="bfloat16", **overrides)


def describe(name: str) -> dict[str, Any]:
    arch, overrides = MODEL_SHAPES[name]
    return {"name": f"{name} shaped, random weights", "arch": arch, "dtype": "bfloat16", **overrides}
