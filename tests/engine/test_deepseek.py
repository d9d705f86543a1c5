"""DeepSeek V2/V3 specifics beyond the parity suites (which run both fixtures through every
scheduling regime, tensor parallelism, expert parallelism and the interpreted Triton kernels): the
latent KV cache's size, the router against transformers' own, FP8 and integer checkpoints of every
latent projection, multi-token-prediction layers left unloaded, and configs refused by name."""

from __future__ import annotations

import pathlib
import tempfile

import pytest
import torch
from transformers import PretrainedConfig
from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2TopkRouter
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

from pagoda.engine.fixtures import make_fp8_model, read_weights, tiny_config, write_variant
from pagoda.engine.int_quant_fixtures import make_int_quant_model
from pagoda.engine.layers.attention import kv_block_bytes
from pagoda.engine.layers.moe import route
from pagoda.engine.llm import LLM
from pagoda.engine.model_config import ModelConfig, load_model_config
from pagoda.engine.sampling_params import SamplingParams
from tests.engine.hf_reference import engine_token_ids, hf_greedy

PROMPTS = [[17, 42, 99, 7, 256, 3, 88, 12, 5, 61], [300, 4, 4, 19], [17, 42, 99, 7, 256, 3, 88, 9]]
GREEDY = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)


def _our_config(config: PretrainedConfig) -> ModelConfig:
    """Our reading of a transformers config, through the config.json it writes."""
    with tempfile.TemporaryDirectory() as out:
        config.save_pretrained(out)
        return load_model_config(out)


def test_the_cache_holds_one_latent_per_token_and_layer(tiny_model) -> None:
    """One plane of kv_lora_rank + qk_rope_head_dim numbers per token and layer: the pool holds
    as many blocks as that size divides the budget, where per-head K and V (4 heads of 24 and 16)
    would hold (2 * 4 * 24 / 40 =) 4.8 times fewer tokens even before V."""
    path = tiny_model("deepseek_v3")
    cfg = load_model_config(path)
    assert (cfg.num_kv_heads, cfg.head_dim, cfg.kv_planes) == (1, 32 + 8, 1)
    budget = 1 << 20
    llm = LLM(str(path), dtype="float32", block_size=4, kv_cache_memory_bytes=budget)
    runner = llm.engine.runner
    assert tuple(runner.kv_cache.shape) == (1, cfg.num_layers, runner.num_blocks, 4, 1, 40)
    assert runner.num_blocks == budget // kv_block_bytes(cfg.num_layers, 1, 40, torch.float32, 4, planes=1)
    layer = runner.model.model.layers[0].self_attn.attn
    assert layer.k_cache.data_ptr() == layer.v_cache.data_ptr(), "the latent is both key and value"
    got = engine_token_ids(llm, PROMPTS, GREEDY)
    assert got == [hf_greedy(path, p, GREEDY.max_tokens) for p in PROMPTS]


@pytest.mark.parametrize("arch", ["deepseek_v2", "deepseek_v3"])
def test_the_router_chooses_as_transformers_does(arch: str) -> None:
    """Grouped routing (V2: groups ranked by their best softmax score; V3: by their two best sigmoid
    scores plus the correction bias, which steers the choice but not the weights): the same experts
    with the same weights as transformers' router modules on 64 tokens."""
    config = tiny_config(arch, n_routed_experts=16, n_group=4, topk_group=2, num_experts_per_tok=4)
    hf_router = (DeepseekV3TopkRouter if arch == "deepseek_v3" else DeepseekV2TopkRouter)(config).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        hf_router.weight.normal_()
        if arch == "deepseek_v3":
            hf_router.e_score_correction_bias.uniform_(-0.5, 0.5)
    x = torch.randn(64, config.hidden_size)
    with torch.no_grad():
        logits, hf_weights, hf_ids = hf_router(x)
    moe = _our_config(config).moe
    bias = hf_router.e_score_correction_bias if arch == "deepseek_v3" else None
    weights, ids = route(logits, moe.top_k, moe.renormalize, scoring=moe.scoring, num_groups=moe.num_groups,
                         topk_groups=moe.topk_groups, bias=bias, scaling=moe.routed_scaling_factor)
    order, hf_order = ids.sort(dim=-1), hf_ids.sort(dim=-1)
    assert torch.equal(order.values, hf_order.values)
    torch.testing.assert_close(weights.gather(1, order.indices), hf_weights.gather(1, hf_order.indices))
    # Without the groups the choice differs for some tokens: the test sees the grouping.
    ungrouped = route(logits, moe.top_k, moe.renormalize, scoring=moe.scoring, bias=bias)[1]
    assert not torch.equal(ungrouped.sort(dim=-1).values, order.values)


@pytest.mark.parametrize("tp", [1, 2])
def test_fp8_checkpoint_matches_transformers(tiny_model, tmp_path: pathlib.Path, tp: int) -> None:
    """DeepSeek-V3's own checkpoint format: every projection (the low-rank q_a/kv_a, q_b, kv_b, o,
    experts, shared experts) in FP8 blocks; kv_b_proj is read out of its FP8 blocks into the absorbed
    per-head matrices. transformers' tokens on the same stored weights, heads split across ranks too."""
    fp8 = make_fp8_model(tiny_model("deepseek_v3"), tmp_path / "fp8", (8, 8), dequantized_dir=tmp_path / "plain")
    llm = LLM(str(fp8), dtype="float32", tensor_parallel_size=tp, block_size=4, max_num_batched_tokens=8)
    attention = llm.engine.runner.model.model.layers[1].self_attn
    for proj in (attention.q_a_proj, attention.q_b_proj, attention.kv_a_proj_with_mqa, attention.o_proj):
        assert proj.weight.dtype == torch.float8_e4m3fn
    assert not hasattr(attention, "kv_b_proj") and attention.w_uk.dtype == torch.float32
    got = engine_token_ids(llm, PROMPTS, GREEDY)
    assert got == [hf_greedy(tmp_path / "plain", p, GREEDY.max_tokens) for p in PROMPTS]


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_integer_checkpoint_matches_transformers(tiny_model, tmp_path: pathlib.Path, method: str) -> None:
    """A 4-bit DeepSeek-V2 checkpoint (every projection packed: q, kv_a, kv_b, o, experts, shared
    experts), kv_b_proj read out of its packed words into the absorbed matrices: transformers' tokens
    on the same weights dequantized."""
    path = make_int_quant_model(tiny_model("deepseek_v2"), tmp_path / "q", tmp_path / "plain", method)
    llm = LLM(str(path), dtype="float32", block_size=4, max_num_batched_tokens=8)
    attention = llm.engine.runner.model.model.layers[1].self_attn
    assert attention.kv_a_proj_with_mqa.int_quant is not None and not hasattr(attention, "kv_b_proj")
    got = engine_token_ids(llm, PROMPTS, GREEDY)
    assert got == [hf_greedy(tmp_path / "plain", p, GREEDY.max_tokens) for p in PROMPTS]


def test_multi_token_prediction_layers_are_left_unloaded(tiny_model, tmp_path: pathlib.Path) -> None:
    """DeepSeek-V3 checkpoints store a multi-token-prediction layer after the last decoder layer
    (num_nextn_predict_layers): it is not served, and its tensors are skipped rather than refused."""
    path = tiny_model("deepseek_v3")
    tensors = read_weights(path)
    last = load_model_config(path).num_layers
    mtp = {f"model.layers.{last}.{name}": torch.ones(4, 4) for name in ("eh_proj.weight", "enorm.weight",
                                                                         "self_attn.kv_b_proj.weight")}
    variant = write_variant(path, tmp_path / "mtp", {**tensors, **mtp}, num_nextn_predict_layers=1)
    llm = LLM(str(variant), dtype="float32", block_size=4)
    assert engine_token_ids(llm, PROMPTS[:1], GREEDY) == [hf_greedy(path, PROMPTS[0], GREEDY.max_tokens)]
    without = write_variant(path, tmp_path / "undeclared", {**tensors, **mtp}, num_nextn_predict_layers=0)
    with pytest.raises(ValueError, match="model.layers.2.eh_proj.weight"):
        LLM(str(without), dtype="float32")


@pytest.mark.parametrize(("changes", "message"), [
    ({"topk_method": "random"}, "topk_method='random'"),
    ({"scoring_func": "relu"}, "scoring_func='relu'"),
    ({"n_group": 3}, "n_group 3 does not divide the 8 experts"),
    ({"kv_lora_rank": 0}, "needs kv_lora_rank"),
])
def test_configs_the_engine_cannot_serve_are_refused(tiny_model, tmp_path: pathlib.Path, changes: dict,
                                                     message: str) -> None:
    path = write_variant(tiny_model("deepseek_v3"), tmp_path / "bad", **changes)
    with pytest.raises(ValueError, match=message):
        LLM(str(path), dtype="float32")
