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
from pagoda.engine.layers.int_quant import NF4, quantize_codebook_groups
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


def test_nf4_quantization_is_bitsandbytes_own() -> None:
    """Quantizing at load gives bitsandbytes' quantize_4bit: its absmax and its nearest codes."""
    import bitsandbytes.functional as bnb

    weight = torch.randn(48, 256, generator=torch.Generator().manual_seed(0))
    packed, state = bnb.quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=False)
    assert torch.equal(state.code.float(), torch.tensor(NF4))
    ints, scales = quantize_codebook_groups(weight, torch.tensor(NF4), 64)
    flat = packed.view(-1).long()
    assert torch.equal(ints.long(), torch.stack([flat >> 4, flat & 15], dim=-1).view(48, 256))
    assert torch.equal(scales.flatten(), state.absmax.float())


@pytest.mark.parametrize(("arch", "tp"), [("qwen3", 1), ("llama", 2)])
def test_nf4_at_load_from_a_full_precision_checkpoint(tiny_model, arch: str, tp: int) -> None:
    """quantization="bitsandbytes" on a full-precision checkpoint holds every attention and MLP
    projection in NF4 within its precision of the checkpoint, and generates what the model given
    exactly those dequantized weights generates; two ranks, each quantizing its shard in blocks of 64
    (a hidden size of 128: 64 columns a rank), what one rank generates."""
    path = tiny_model(arch, hidden_size=128) if tp > 1 else tiny_model(arch)
    nf4 = LLM(str(path), dtype="float32", block_size=4, quantization="bitsandbytes", tensor_parallel_size=tp)
    layers = [(name, m) for name, m in nf4.engine.runner.model.named_modules() if getattr(m, "codebook", None) is not None]
    assert len(layers) == 4 * 2
    got = engine_token_ids(nf4, PROMPTS, GREEDY)  # shut down before another engine starts in this process
    if tp > 1:  # each rank quantizes its own shard, in the blocks one rank has
        one = LLM(str(path), dtype="float32", block_size=4, quantization="bitsandbytes")
        assert got == engine_token_ids(one, PROMPTS, GREEDY)
        return
    dense = LLM(str(path), dtype="float32", block_size=4)
    plain = engine_token_ids(dense, PROMPTS, GREEDY)
    dense = LLM(str(path), dtype="float32", block_size=4)
    params = dict(dense.engine.runner.model.named_parameters())
    with torch.no_grad():
        for name, layer in layers:
            approx = reference.int_dequantize(layer.qweight, layer.scales, layer.zeros, None, 4, 64, layer.codebook)
            exact = params[f"{name}.weight"]
            assert (approx - exact).norm() / exact.norm() < 0.15, name
            exact.copy_(approx)
    assert got == engine_token_ids(dense, PROMPTS, GREEDY), "NF4 serving is the dense model on its weights"
    assert got != plain, "quantization is visible in the output"
