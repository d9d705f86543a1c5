"""FP8 checkpoints with per-tensor and per-channel scales (vLLM's original `fp8` format and
llm-compressor's compressed-tensors FP8, FP8_DYNAMIC and FP8_BLOCK schemes): served as FP8
weights, token for token what Hugging Face generates from exactly the weights they store, under
tensor parallelism and in MoE experts too; the fixtures' layout is what compressed-tensors reads."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
from transformers import AutoModelForCausalLM

from pagoda.engine.fixtures import make_fp8_model, write_variant
from pagoda.engine.layers.fp8 import WHOLE
from pagoda.engine.llm import LLM
from pagoda.engine.model_config import load_model_config
from tests.engine.hf_reference import engine_token_ids, hf_greedy
from tests.engine.test_fp8 import GREEDY, PROMPTS

CT = "compressed-tensors"


@pytest.fixture(scope="module")
def fp8_checkpoint(tiny_model, tmp_path_factory):
    """fp8_checkpoint(arch, method, strategy) -> (FP8 checkpoint, its dequantized twin)."""
    cache: dict = {}

    def make(arch: str, method: str, strategy: str) -> tuple[pathlib.Path, pathlib.Path]:
        if (arch, method, strategy) not in cache:
            root = tmp_path_factory.mktemp(f"{arch}-{method}-{strategy}")
            packed = make_fp8_model(tiny_model(arch), root / "fp8", (16, 16), strategy=strategy, method=method,
                                    dequantized_dir=root / "plain")
            cache[arch, method, strategy] = packed, root / "plain"
        return cache[arch, method, strategy]

    return make


@pytest.mark.parametrize(("arch", "method", "strategy", "tp"), [
    ("llama", "fp8", "tensor", 1), ("qwen3", "fp8", "tensor", 2), ("qwen3_moe", "fp8", "tensor", 2),
    ("llama", CT, "channel", 1), ("qwen2", CT, "channel", 2), ("qwen3_moe", CT, "channel", 1),
    ("qwen3", CT, "tensor", 1), ("qwen2_moe", CT, "tensor", 2), ("llama", CT, "block", 2),
])
def test_fp8_checkpoint_matches_its_dequantized_weights(fp8_checkpoint, arch: str, method: str, strategy: str,
                                                         tp: int) -> None:
    """Per-tensor scales of the fused parts (q, k, v; gate, up) stay each part's own; per-channel
    scales are split with the rows and shared by every rank's columns."""
    packed, plain = fp8_checkpoint(arch, method, strategy)
    llm = LLM(str(packed), dtype="float32", tensor_parallel_size=tp, block_size=4, max_num_batched_tokens=8)
    model = llm.engine.runner.model
    proj = model.model.layers[0].self_attn.qkv_proj
    assert proj.weight.dtype == torch.float8_e4m3fn and proj.weight_scale_inv.dtype == torch.float32
    assert proj.fp8_block == ((16, 16) if strategy == "block" else (1, WHOLE))
    assert model.lm_head.weight.dtype == torch.float32, "the LM head stays at full precision"
    if "moe" in arch:
        experts = model.model.layers[1].mlp.experts
        assert experts.w13.dtype == experts.w2.dtype == torch.float8_e4m3fn
    got = engine_token_ids(llm, PROMPTS, GREEDY)
    assert got == [hf_greedy(plain, p, GREEDY.max_tokens) for p in PROMPTS]


def test_per_tensor_scales_of_fused_parts_are_kept_apart(fp8_checkpoint) -> None:
    """q, k and v each bring their own scale: each fills its own rows of the fused projection."""
    packed, _ = fp8_checkpoint("llama", "fp8", "tensor")
    llm = LLM(str(packed), dtype="float32", block_size=4)
    proj = llm.engine.runner.model.model.layers[0].self_attn.qkv_proj
    from safetensors.torch import load_file
    stored = load_file(str(packed / "model.safetensors"))
    scales = [stored[f"model.layers.0.self_attn.{p}_proj.weight_scale"] for p in "qkv"]
    assert len({s.item() for s in scales}) == 3
    expected = torch.cat([s.expand(rows) for s, rows in zip(scales, (64, 32, 32))])
    torch.testing.assert_close(proj.weight_scale_inv[:, 0], expected)


@pytest.mark.parametrize("strategy", ["channel", "tensor", "block"])
def test_compressed_tensors_reads_the_fixtures_as_their_dequantized_twins(fp8_checkpoint, tmp_path,
                                                                          strategy: str) -> None:
    """transformers through compressed-tensors decompresses the fixture into exactly its twin's
    weights (its activations left unquantized, as pagoda serves them), so the fixtures are the
    format's meaning rather than ours."""
    packed, plain = fp8_checkpoint("llama", CT, strategy)
    quant = json.loads((packed / "config.json").read_text())["quantization_config"]
    quant["config_groups"]["group_0"]["input_activations"] = None
    weight_only = write_variant(packed, tmp_path / "weight-only", quantization_config=quant)
    ids = torch.tensor([PROMPTS[0]])
    logits = [AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)(ids).logits for path in (weight_only, plain)]
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)


def test_vllm_s_quantization_name_asserts_the_checkpoint_s_format(fp8_checkpoint) -> None:
    packed, _ = fp8_checkpoint("llama", CT, "channel")
    LLM(str(packed), dtype="float32", block_size=4, quantization="compressed-tensors")
    with pytest.raises(ValueError, match=r"quantization='fp8' does not fit the checkpoint, which is already "
                                         r"quantized \(compressed-tensors\)"):
        LLM(str(packed), dtype="float32", quantization="fp8")


def _float_scheme(**weights: object) -> dict:
    scheme = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "channel", **weights}
    return {"quant_method": CT, "format": "float-quantized", "config_groups": {"g": {"weights": scheme}}}


@pytest.mark.parametrize(("quant", "message"), [
    (_float_scheme(num_bits=4), "float weights of 4 bits"),
    (_float_scheme(symmetric=False), "symmetric False"),
    (_float_scheme(strategy="group", group_size=32), "strategy 'group'"),
    (_float_scheme(strategy="block", block_structure=[128]), "two positive integers"),
    ({**_float_scheme(), "format": "nvfp4-pack-quantized"}, r"format \['nvfp4-pack-quantized'\]"),
    ({"quant_method": "fp8", "activation_scheme": "static", "weight_block_size": [128, 128]}, "static activations"),
    ({"quant_method": "fp8", "activation_scheme": "per-channel"}, "activation_scheme 'per-channel'"),
])
def test_fp8_schemes_that_cannot_be_served_are_refused_by_name(tiny_model, tmp_path, quant: dict,
                                                                message: str) -> None:
    model = write_variant(tiny_model("llama"), tmp_path / "m", quantization_config=quant)
    with pytest.raises(ValueError, match=message):
        load_model_config(model)
