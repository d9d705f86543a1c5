"""Which decoder layers fold their norms, activation and residual adds into their GEMMs, and that folding
changes nothing but the launches: the same tokens with folding on and off, and layers it cannot serve
(quantized or LoRA'd projections, Granite's multipliers, MoE MLPs, steps past one row tile) left alone."""

from __future__ import annotations

import pytest

from pagoda.engine.llm import LLM
from pagoda.engine.models.llama import DecoderLayer
from pagoda.engine.sampling_params import SamplingParams
from pagoda.kernels.reference import FUSED_LINEAR_ROWS

PROMPTS = ["Hello, my name is", "The capital of France is", "One two three"]


def _decoder_layers(llm: LLM) -> list[DecoderLayer]:
    return [m for m in llm.engine.runner.model.modules() if isinstance(m, DecoderLayer)]


def test_plain_layers_fold_up_to_one_row_tile(tiny_model) -> None:
    layers = _decoder_layers(LLM(str(tiny_model("qwen3")), dtype="float32", block_size=4))
    assert layers and all(layer.folds_edges(FUSED_LINEAR_ROWS) for layer in layers)
    assert not any(layer.folds_edges(FUSED_LINEAR_ROWS + 1) for layer in layers)


@pytest.mark.parametrize(("arch", "options"), [
    ("llama", {"quantization": "fp8"}),  # FP8 weights: their own GEMM
    ("llama", {"enable_lora": True, "max_loras": 1, "max_lora_rank": 4}),  # adapters add to the projections
    ("granite", {}),  # residual multipliers between the branches and the stream
    ("qwen2_moe", {}),  # experts instead of one gated MLP
])
def test_layers_that_cannot_fold_keep_their_kernels(arch: str, options: dict, tiny_model) -> None:
    layers = _decoder_layers(LLM(str(tiny_model(arch)), dtype="float32", block_size=4, **options))
    assert layers and not any(layer.folds_edges(1) for layer in layers)


@pytest.mark.parametrize("arch", ["llama3", "qwen2", "qwen3"])
def test_folding_changes_no_token(arch: str, tiny_model, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decodes of three sequences (folded: a row tile holds them) against the same run with folding off;
    on the CPU both run the reference ops, so the logits, hence greedy tokens, match exactly."""
    path = str(tiny_model(arch))
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=2)
    folded = LLM(path, dtype="float32", block_size=4).generate(PROMPTS, params)
    monkeypatch.setattr(DecoderLayer, "fused_rows", 0)
    unfolded = LLM(path, dtype="float32", block_size=4).generate(PROMPTS, params)
    for a, b in zip(folded, unfolded):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        assert a.outputs[0].logprobs == b.outputs[0].logprobs
