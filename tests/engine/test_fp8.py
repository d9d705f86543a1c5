"""Block-wise FP8 checkpoints (quant_method fp8, as Qwen3-*-FP8 ship): served with FP8 weights,
token for token what Hugging Face reads from the same checkpoint, under tensor parallelism too;
formats the engine cannot serve are refused by name."""

from __future__ import annotations

import pathlib

import pytest
import torch

from pagoda.engine.config import EngineConfig
from pagoda.engine.fixtures import make_fp8_model, write_variant
from pagoda.engine.llm import LLM
from pagoda.engine.model_config import load_model_config
from pagoda.engine.sampling_params import SamplingParams
from pagoda.kernels import reference
from tests.engine.hf_reference import engine_token_ids, hf_greedy

PROMPTS = [[17, 42, 99, 7, 256, 3, 88, 12, 5, 61], [300, 4, 4, 19], [17, 42, 99, 7, 256, 3, 88, 9]]
GREEDY = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)


@pytest.fixture(scope="module")
def fp8_model(tiny_model, tmp_path_factory):
    """fp8_model(arch, block) -> (dense directory, its FP8 checkpoint)."""
    cache: dict = {}

    def make(arch: str, block: tuple[int, int] = (16, 16)) -> tuple[pathlib.Path, pathlib.Path]:
        if (arch, block) not in cache:
            dense = tiny_model(arch)
            cache[arch, block] = dense, make_fp8_model(dense, tmp_path_factory.mktemp(f"fp8-{arch}") / "model", block)
        return cache[arch, block]

    return make


@pytest.mark.parametrize(("arch", "block", "tp"), [
    ("llama", (16, 16), 1), ("qwen2", (32, 16), 1), ("qwen3", (16, 32), 1), ("llama", (16, 16), 2), ("qwen3", (16, 16), 2),
    ("qwen3_moe", (16, 16), 1), ("qwen2_moe", (16, 16), 2),
])
def test_fp8_checkpoint_matches_transformers(fp8_model, arch: str, block: tuple[int, int], tp: int) -> None:
    dense, fp8 = fp8_model(arch, block)
    llm = LLM(str(fp8), dtype="float32", tensor_parallel_size=tp, block_size=4, max_num_batched_tokens=8)
    model = llm.engine.runner.model
    proj = model.model.layers[0].self_attn.qkv_proj
    assert proj.weight.dtype == torch.float8_e4m3fn and proj.weight_scale_inv.dtype == torch.float32
    assert model.lm_head.weight.dtype == torch.float32, "the LM head stays at full precision"
    if "moe" in arch:
        experts = model.model.layers[1].mlp.experts
        assert experts.w13.dtype == experts.w2.dtype == torch.float8_e4m3fn
        assert model.model.layers[1].mlp.gate.weight.dtype == torch.float32, "the router stays at full precision"
    got = engine_token_ids(llm, PROMPTS, GREEDY)
    assert got == [hf_greedy(fp8, p, GREEDY.max_tokens) for p in PROMPTS]
    assert got != [hf_greedy(dense, p, GREEDY.max_tokens) for p in PROMPTS], "quantization is visible in the output"


def test_a_tensor_parallel_split_inside_a_block_is_refused(fp8_model) -> None:
    """llama's 2 KV heads of 16 make 16-row shards at tp=2: blocks of 32 rows would straddle ranks."""
    _, fp8 = fp8_model("llama", (32, 32))
    with pytest.raises(ValueError, match="does not fall on blocks of 32"):
        LLM(str(fp8), dtype="float32", tensor_parallel_size=2)


def test_a_tensor_parallel_split_inside_an_expert_block_is_refused(fp8_model) -> None:
    """qwen3_moe's experts are 48 wide: 24 columns per rank at tp=2, inside blocks of 16."""
    _, fp8 = fp8_model("qwen3_moe")
    with pytest.raises(ValueError, match="FP8 expert columns of 24 .* does not fall on blocks of 16"):
        LLM(str(fp8), dtype="float32", tensor_parallel_size=2)


@pytest.mark.parametrize("quant", [
    {"quant_method": "gguf"},
    {"quant_method": "hqq", "nbits": 4},
    {"quant_method": "fp8", "activation_scheme": "static", "weight_block_size": [128, 128]},
])
def test_unsupported_quantization_is_refused(tiny_model, tmp_path: pathlib.Path, quant: dict) -> None:
    model = write_variant(tiny_model("llama"), tmp_path / "m", quantization_config=quant)
    with pytest.raises(ValueError, match=f"quantization '{quant['quant_method']}.*is not supported"):
        load_model_config(model)


def _dequantized(layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The real weights of an FP8 layer: a projection's `weight`, or every expert's `w13` and `w2`."""
    if hasattr(layer, "weight_scale_inv"):
        return {"weight": reference.fp8_block_dequantize(layer.weight, layer.weight_scale_inv, layer.fp8_block)}
    return {name: torch.stack([reference.fp8_block_dequantize(w, s, layer.fp8_block)
                               for w, s in zip(getattr(layer, name), getattr(layer, f"{name}_scale_inv"))])
            for name in ("w13", "w2")}


@pytest.mark.parametrize(("arch", "fp8_layers"), [("qwen3", 4 * 2), ("qwen3_moe", 4 + 3)])
def test_fp8_at_load_from_a_full_precision_checkpoint(tiny_model, arch: str, fp8_layers: int) -> None:
    """quantization="fp8" on a full-precision checkpoint holds every projection (and expert) in FP8
    within e4m3's precision of the checkpoint, and generates what the dense model given exactly
    those dequantized weights generates; the LM head, embeddings and routers stay as they were."""
    path = tiny_model(arch)
    dense = LLM(str(path), dtype="float32", block_size=4)
    fp8 = LLM(str(path), dtype="float32", block_size=4, quantization="fp8")
    model = fp8.engine.runner.model
    layers = [(name, m) for name, m in model.named_modules() if getattr(m, "fp8_block", None) is not None]
    assert len(layers) == fp8_layers, "qkv, o and the dense MLP's two projections or the experts, per layer"
    assert model.lm_head.weight.dtype == model.model.embed_tokens.weight.dtype == torch.float32
    dense_params = dict(dense.engine.runner.model.named_parameters())
    plain = engine_token_ids(dense, PROMPTS, GREEDY)
    with torch.no_grad():
        for name, layer in layers:
            assert layer.fp8_block == (128, 128)
            for param, approx in _dequantized(layer).items():
                assert getattr(layer, param).dtype == torch.float8_e4m3fn
                exact = dense_params[f"{name}.{param}"]
                assert (approx - exact).norm() / exact.norm() < 0.04, name
                exact.copy_(approx)
    dense.engine.block_manager.reset_prefix_cache()  # its cached blocks hold K/V of the old weights
    got = engine_token_ids(fp8, PROMPTS, GREEDY)
    assert got == engine_token_ids(dense, PROMPTS, GREEDY), "FP8 serving is the dense model on the dequantized weights"
    assert got != plain, "quantization is visible in the output"


def test_unknown_quantization_option_is_refused() -> None:
    with pytest.raises(ValueError, match="quantization must be one of fp8"):
        EngineConfig(model="m", quantization="int4")
