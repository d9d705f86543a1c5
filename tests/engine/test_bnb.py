"""bitsandbytes 4-bit checkpoints (NF4 and FP4, with and without double quantization), written by
transformers and bitsandbytes themselves: served packed, half a byte per weight, dequantized to
exactly what bitsandbytes reads out of them, and generating what transformers generates from
those weights, under tensor parallelism too."""

from __future__ import annotations

import pathlib

import pytest
import torch

from pagoda.engine.fixtures import read_weights
from pagoda.engine.int_quant_fixtures import make_bnb_model
from pagoda.engine.llm import LLM
from pagoda.kernels import reference
from tests.engine.hf_reference import engine_token_ids, hf_greedy
from tests.engine.test_int_quant import GREEDY, PROMPTS

pytest.importorskip("bitsandbytes", reason="bitsandbytes writes the fixtures (a test extra)")


@pytest.fixture(scope="module")
def bnb_model(tiny_model, tmp_path_factory):
    """bnb_model(arch, quant_type, double_quant) -> (bitsandbytes checkpoint, its dequantized twin)."""
    cache: dict = {}

    def make(arch: str, quant_type: str = "nf4", double_quant: bool = True) -> tuple[pathlib.Path, pathlib.Path]:
        key = (arch, quant_type, double_quant)
        if key not in cache:
            root = tmp_path_factory.mktemp(f"bnb-{arch}-{quant_type}")
            cache[key] = make_bnb_model(tiny_model(arch), root / "q", root / "dq", quant_type, double_quant), root / "dq"
        return cache[key]

    return make


@pytest.mark.parametrize(("arch", "quant_type", "double_quant", "tp"), [
    ("llama", "nf4", True, 1), ("qwen3", "fp4", False, 1), ("qwen2", "nf4", False, 2), ("llama", "fp4", True, 2),
    ("qwen3_moe", "nf4", True, 1),
])
def test_bnb_checkpoint_matches_transformers_on_its_weights(bnb_model, arch: str, quant_type: str,
                                                            double_quant: bool, tp: int) -> None:
    packed, plain = bnb_model(arch, quant_type, double_quant)
    llm = LLM(str(packed), dtype="float32", tensor_parallel_size=tp, block_size=4, max_num_batched_tokens=8)
    model = llm.engine.runner.model
    proj = model.model.layers[0].self_attn.qkv_proj
    assert proj.qweight.dtype == torch.int32 and proj.codebook.shape == (16,)
    assert model.lm_head.weight.dtype == torch.float32, "the LM head stays at full precision"
    got = engine_token_ids(llm, PROMPTS, GREEDY)
    assert got == [hf_greedy(plain, p, GREEDY.max_tokens) for p in PROMPTS]


@pytest.mark.parametrize(("quant_type", "double_quant"), [("nf4", True), ("fp4", False)])
def test_weights_are_what_bitsandbytes_reads(bnb_model, quant_type: str, double_quant: bool) -> None:
    """Every projection dequantizes to bitsandbytes' own `dequantize_4bit` of it, bit for bit:
    nibble order, blocks, codebook, and the double-quantized absmax with its offset."""
    packed, plain = bnb_model("llama", quant_type, double_quant)
    llm = LLM(str(packed), dtype="float32", block_size=4)
    twin = read_weights(plain)
    checked = 0
    for name, module in llm.engine.runner.model.named_modules():
        if getattr(module, "codebook", None) is None:
            continue
        ours = reference.int_dequantize(module.qweight, module.scales, module.zeros, None, 4, 64, module.codebook)
        parts = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
        leaf = name.rpartition(".")[2]
        stored = [twin[f"{name.rpartition('.')[0]}.{part}.weight"] for part in parts.get(leaf, (leaf,))]
        assert torch.equal(ours, torch.cat(stored)), name
        checked += 1
    assert checked == 2 * 4


def test_vllm_s_quantization_name_asserts_the_checkpoint_s_format(bnb_model) -> None:
    packed, _ = bnb_model("llama")
    LLM(str(packed), dtype="float32", block_size=4, quantization="bitsandbytes")
    with pytest.raises(ValueError, match=r"quantization='gptq' does not fit the checkpoint, which is already "
                                         r"quantized \(bitsandbytes\)"):
        LLM(str(packed), dtype="float32", quantization="gptq")
