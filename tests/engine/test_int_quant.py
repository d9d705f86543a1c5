"""Integer-quantized checkpoints (GPTQ, AWQ, compressed-tensors pack-quantized; 4 and 8 bits):
served with packed integer weights, token for token what transformers computes from the same
weights dequantized, under tensor parallelism too; what cannot be served is refused by name."""

from __future__ import annotations

import pathlib

import pytest
import torch

from pagoda.engine.fixtures import write_variant
from pagoda.engine.int_quant_fixtures import make_int_quant_model
from pagoda.engine.llm import LLM
from pagoda.engine.model_config import load_model_config
from pagoda.engine.sampling_params import SamplingParams
from tests.engine.hf_reference import engine_token_ids, hf_greedy

PROMPTS = [[17, 42, 99, 7, 256, 3, 88, 12, 5, 61], [300, 4, 4, 19], [17, 42, 99, 7, 256, 3, 88, 9]]
GREEDY = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)


@pytest.fixture(scope="module")
def quantized(tiny_model, tmp_path_factory):
    """quantized(arch, method, **options) -> (quantized checkpoint, its dequantized twin)."""
    cache: dict = {}

    def make(arch: str, method: str, model: dict | None = None, **options) -> tuple[pathlib.Path, pathlib.Path]:
        key = (arch, method, repr(model), tuple(sorted(options.items())))
        if key not in cache:
            root = tmp_path_factory.mktemp(f"{method}-{arch}")
            dense = tiny_model(arch, **(model or {}))
            cache[key] = (make_int_quant_model(dense, root / "q", root / "dq", method, **options), root / "dq")
        return cache[key]

    return make


CASES = [
    ("llama", "gptq", {"bits": 4, "group_size": 16}, 1),
    ("qwen2", "gptq", {"bits": 8, "group_size": 32, "symmetric": True}, 1),
    ("qwen3", "gptq", {"bits": 4, "group_size": 16, "act_order": True}, 1),
    ("llama", "gptq", {"bits": 4, "group_size": -1, "gptq_v1": False}, 1),
    ("llama", "awq", {"bits": 4, "group_size": 32}, 1),
    ("qwen3", "compressed-tensors", {"bits": 4, "group_size": 16, "symmetric": True}, 1),
    ("mistral", "compressed-tensors", {"bits": 8, "group_size": -1, "symmetric": False}, 1),
    ("llama", "compressed-tensors", {"bits": 4, "group_size": 16, "act_order": True}, 1),
    ("llama", "gptq", {"bits": 4, "group_size": 16}, 2),
    ("qwen3", "gptq", {"bits": 4, "group_size": 16, "act_order": True}, 2),
    ("qwen2", "awq", {"bits": 4, "group_size": 16}, 2),
    ("llama", "compressed-tensors", {"bits": 4, "group_size": -1, "symmetric": True}, 2),
]


@pytest.mark.parametrize(("arch", "method", "options", "tp"), CASES, ids=lambda v: str(v))
def test_int_checkpoint_matches_transformers_on_the_dequantized_weights(quantized, arch, method, options, tp) -> None:
    packed, dequantized = quantized(arch, method, **options)
    llm = LLM(str(packed), dtype="float32", tensor_parallel_size=tp, block_size=4, max_num_batched_tokens=8)
    model = llm.engine.runner.model
    for proj in (model.model.layers[0].self_attn.qkv_proj, model.model.layers[0].mlp.down_proj):
        assert proj.qweight.dtype == torch.int32 and not hasattr(proj, "weight")
        columns = proj.in_features if hasattr(proj, "in_features") else proj.in_features_per_rank
        assert proj.qweight.shape[1] == columns * options["bits"] // 32, "packed: bits / 32 words per weight"
    scales = model.model.layers[0].self_attn.qkv_proj.scales
    assert scales.dtype == (torch.float16 if method in ("gptq", "awq") else torch.float32), "scales kept as stored"
    assert model.lm_head.weight.dtype == torch.float32, "the LM head stays at full precision"
    got = engine_token_ids(llm, PROMPTS, GREEDY)
    assert got == [hf_greedy(dequantized, p, GREEDY.max_tokens) for p in PROMPTS]


def test_quantization_is_visible_in_the_output(quantized, tiny_model) -> None:
    """The fixtures' 4-bit channel-wise weights change the greedy text: the parity above is not the dense model's."""
    packed, dequantized = quantized("llama", "gptq", bits=4, group_size=-1, gptq_v1=False)
    dense = tiny_model("llama")
    assert [hf_greedy(dequantized, p, 10) for p in PROMPTS] != [hf_greedy(dense, p, 10) for p in PROMPTS]


def test_a_tensor_parallel_split_inside_a_group_is_refused(quantized) -> None:
    """down_proj of 96 input columns: 48 per rank at tp=2, which splits the second group of 32."""
    packed, _ = quantized("llama", "gptq", model={"intermediate_size": 96}, bits=4, group_size=32)
    with pytest.raises(ValueError, match="gptq groups of 32 columns do not fall on this rank's 48 columns"):
        LLM(str(packed), dtype="float32", tensor_parallel_size=2)


@pytest.mark.parametrize(("arch", "method", "options", "tp"), [
    ("qwen3_moe", "gptq", {"bits": 4, "group_size": 16}, 1),
    ("mixtral", "awq", {"bits": 4, "group_size": 32}, 1),
    ("qwen2_moe", "compressed-tensors", {"bits": 4, "group_size": 16, "symmetric": True}, 2),
    ("qwen3_moe", "gptq", {"bits": 8, "group_size": -1, "gptq_v1": False}, 2),
], ids=str)
def test_int_experts_match_transformers_on_the_dequantized_weights(quantized, arch, method, options, tp) -> None:
    """Experts packed too (Qwen3-30B-A3B-GPTQ-Int4, Mixtral AWQ), run by the fused MoE kernel; the router
    stays at full precision; Qwen2-MoE's shared expert is a quantized dense MLP."""
    packed, dequantized = quantized(arch, method, **options)
    llm = LLM(str(packed), dtype="float32", tensor_parallel_size=tp, block_size=4, max_num_batched_tokens=8)
    layer = llm.engine.runner.model.model.layers[1].mlp
    assert layer.experts.w13_qweight.dtype == torch.int32 and not hasattr(layer.experts, "w13")
    assert layer.gate.weight.dtype == torch.float32, "the router stays at full precision"
    got = engine_token_ids(llm, PROMPTS, GREEDY)
    assert got == [hf_greedy(dequantized, p, GREEDY.max_tokens) for p in PROMPTS]


def test_int_experts_with_act_order_are_refused(quantized) -> None:
    packed, _ = quantized("qwen3_moe", "gptq", bits=4, group_size=16, act_order=True)
    with pytest.raises(ValueError, match="gptq experts with act-order"):
        LLM(str(packed), dtype="float32")


def test_a_tensor_parallel_split_inside_an_expert_group(quantized) -> None:
    """qwen3_moe's experts are 48 wide: 24 columns per rank at tp=2, the second rank's starting 8 into the
    second group of 16, whose scales and zeros both ranks hold."""
    packed, dequantized = quantized("qwen3_moe", "gptq", bits=4, group_size=16)
    llm = LLM(str(packed), dtype="float32", tensor_parallel_size=2, block_size=4)
    assert engine_token_ids(llm, PROMPTS, GREEDY) == [hf_greedy(dequantized, p, 10) for p in PROMPTS]


def test_online_quantization_of_a_quantized_checkpoint_is_refused(quantized) -> None:
    packed, _ = quantized("llama", "awq", bits=4, group_size=32)
    with pytest.raises(ValueError, match=r"already quantized \(awq\)"):
        LLM(str(packed), dtype="float32", quantization="fp8")


@pytest.mark.parametrize(("quant", "message"), [
    ({"quant_method": "gptq", "bits": 3, "group_size": 128}, "gptq with 3-bit weights is not supported"),
    ({"quant_method": "gptq", "bits": 4, "checkpoint_format": "marlin"}, "checkpoint_format 'marlin'"),
    ({"quant_method": "gptq", "bits": 4, "dynamic": {"-:.*down": {}}}, "per-module `dynamic`"),
    ({"quant_method": "awq", "bits": 4, "version": "gemv"}, "awq version 'gemv'"),
    ({"quant_method": "awq", "bits": 4, "zero_point": False}, "awq without zero points"),
    ({"quant_method": "compressed-tensors", "format": "float-quantized",
      "config_groups": {"g": {"weights": {"type": "float", "num_bits": 4}}}}, "float weights of 4 bits"),
    ({"quant_method": "compressed-tensors", "format": "pack-quantized",
      "config_groups": {"g": {"weights": {"num_bits": 4, "strategy": "group", "group_size": 128},
                              "input_activations": {"num_bits": 8}}}}, "quantized activations"),
    ({"quant_method": "bitsandbytes", "load_in_8bit": True}, "bitsandbytes 8-bit"),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_storage": "bfloat16"}, "stored as"),
])
def test_formats_that_cannot_be_served_are_refused_by_name(tiny_model, tmp_path, quant, message) -> None:
    model = write_variant(tiny_model("llama"), tmp_path / "m", quantization_config=quant)
    with pytest.raises(ValueError, match=message):
        load_model_config(model)


def test_vllm_s_quantization_names_assert_the_checkpoint_s_format(quantized) -> None:
    packed, _ = quantized("llama", "awq", bits=4, group_size=32)
    engine_token_ids(LLM(str(packed), dtype="float32", quantization="awq_marlin"), PROMPTS, GREEDY)
    with pytest.raises(ValueError, match=r"quantization='gptq' does not fit the checkpoint, which is already quantized \(awq\)"):
        LLM(str(packed), dtype="float32", quantization="gptq")


def test_lora_adapters_on_a_quantized_base_model(quantized, tmp_path) -> None:
    """An adapter's delta adds to the quantized projection's output: what transformers computes from the
    dequantized weights with the adapter merged into them (a QLoRA-style adapter served on GPTQ)."""
    from pagoda.engine.fixtures import make_tiny_lora
    from pagoda.engine.lora import LoRARequest
    from tests.engine.test_lora import merge

    packed, dequantized = quantized("llama", "gptq", bits=4, group_size=16)
    adapter = make_tiny_lora(dequantized, tmp_path / "adapter", rank=8, seed=1)
    llm = LLM(str(packed), dtype="float32", block_size=4, enable_lora=True, max_lora_rank=8)
    try:
        outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY,
                            lora_request=LoRARequest("adapter", str(adapter)))
    finally:
        llm.engine.shutdown()
    merged = merge(dequantized, adapter, tmp_path / "merged")
    assert [o.outputs[0].token_ids for o in outs] == [hf_greedy(merged, p, GREEDY.max_tokens) for p in PROMPTS]
