"""Mixture-of-experts specifics beyond the parity suites (which run every MoE fixture through
every scheduling regime and tensor parallelism): the stacked expert layout, the config rules
that decide which layers route, and LoRA adapters beside experts."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest
from safetensors.torch import save_file

from pagoda.engine.fixtures import build_tiny_model, make_tiny_lora
from pagoda.engine.llm import LLM
from pagoda.engine.lora import LoRARequest
from pagoda.engine.model_config import load_model_config
from pagoda.engine.sampling_params import SamplingParams
from tests.engine.hf_reference import hf_greedy
from tests.engine.test_lora import merge

PROMPTS = [[17, 42, 99, 7, 256, 3, 88, 12, 5, 61], [300, 4, 4, 19]]
GREEDY = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)


def _tokens(llm: LLM) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY)]


@pytest.mark.parametrize(("tp", "ep"), [(1, False), (2, False), (2, True)])
def test_stacked_expert_tensors_load(tiny_model, tmp_path: pathlib.Path, tp: int, ep: bool) -> None:
    """transformers 5 holds a layer's experts as two stacked tensors (gate_up_proj [E, 2I, H],
    down_proj [E, H, I]); a checkpoint saved from that state dict loads as the per-expert one does,
    each rank taking its share of both halves of gate_up (or, expert-parallel, its own experts)."""
    hub = tiny_model("qwen3_moe")
    stacked = tmp_path / "stacked"
    shutil.copytree(hub, stacked)
    (stacked / "model.safetensors").unlink()
    state = build_tiny_model("qwen3_moe").state_dict()
    assert "model.layers.1.mlp.experts.gate_up_proj" in state, "the fixture's in-memory layout changed"
    save_file({name: t.contiguous() for name, t in state.items()}, str(stacked / "model.safetensors"))
    llm = LLM(str(stacked), dtype="float32", tensor_parallel_size=tp, block_size=4, enable_expert_parallel=ep)
    try:
        got = _tokens(llm)
    finally:
        llm.engine.shutdown()
    assert got == [hf_greedy(hub, p, GREEDY.max_tokens) for p in PROMPTS]


def _config(tmp_path: pathlib.Path, **moe: object) -> pathlib.Path:
    config = {"architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 6, "num_attention_heads": 4, "vocab_size": 416, **moe}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_which_layers_route(tmp_path: pathlib.Path) -> None:
    cfg = load_model_config(_config(tmp_path, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                                     decoder_sparse_step=2, mlp_only_layers=[3]))
    assert cfg.moe is not None
    assert [cfg.moe.is_sparse(i) for i in range(6)] == [False, True, False, False, False, True]
    assert (cfg.moe.intermediate_size, cfg.moe.top_k) == (32, 2)
    assert cfg.moe.renormalize, "without norm_topk_prob the weights are renormalized, as Mixtral's are"
    mixtral = load_model_config(_config(tmp_path, architectures=["MixtralForCausalLM"], num_local_experts=4,
                                        num_experts_per_tok=2))
    assert mixtral.moe is not None and mixtral.moe.intermediate_size == 128 and mixtral.moe.num_experts == 4
    assert load_model_config(_config(tmp_path)).moe is None


@pytest.mark.parametrize("top_k", [0, 9])
def test_impossible_top_k_is_refused(tmp_path: pathlib.Path, top_k: int) -> None:
    with pytest.raises(ValueError, match="num_experts_per_tok must be in 1..8"):
        load_model_config(_config(tmp_path, num_experts=8, num_experts_per_tok=top_k))


def test_attention_adapter_on_an_moe_model_and_expert_targets_refused(tiny_model, tmp_path: pathlib.Path) -> None:
    """LoRA on the attention projections of an MoE model equals the merged weights; an adapter
    for the MLP projections of a routed layer names modules that do not exist there: refused."""
    base = tiny_model("qwen3_moe")
    attn = make_tiny_lora(base, tmp_path / "attn", rank=4, targets=("q_proj", "v_proj", "o_proj"), seed=3)
    llm = LLM(str(base), dtype="float32", block_size=4, enable_lora=True, max_lora_rank=8)
    got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY, lora_request=LoRARequest("attn", str(attn)))]
    merged = merge(base, attn, tmp_path / "merged")
    assert got == [hf_greedy(merged, p, GREEDY.max_tokens) for p in PROMPTS]
    assert got != _tokens(llm), "the adapter changes the outputs"
    mlp = make_tiny_lora(base, tmp_path / "mlp", rank=4, targets=("gate_proj",), seed=4)
    with pytest.raises(ValueError, match=r"layers\.1\.mlp\.gate_up_proj .*takes no adapter"):
        llm.generate(PROMPTS, GREEDY, lora_request=LoRARequest("mlp", str(mlp)))


@pytest.mark.parametrize(("arch", "tp", "quant"), [
    ("qwen3_moe", 2, None), ("mixtral", 2, None), ("qwen2_moe", 2, None), ("qwen3_moe", 4, None),
    ("qwen3_moe", 2, "fp8"), ("qwen3_moe", 2, "gptq"), ("deepseek_v3", 2, None),
])
def test_expert_parallelism(tiny_model, tmp_path: pathlib.Path, arch: str, tp: int, quant: str | None) -> None:
    """enable_expert_parallel: each rank holds E / tp whole experts (Qwen2-MoE's shared expert still split
    as a dense MLP), runs only its experts' assignments, and the all-reduce sums them: transformers'
    tokens, for FP8 and GPTQ experts too (whose blocks and groups no longer split across ranks)."""
    from pagoda.engine.fixtures import make_fp8_model
    from pagoda.engine.int_quant_fixtures import make_int_quant_model

    path = reference = tiny_model(arch)
    if quant == "fp8":
        path = make_fp8_model(reference, tmp_path / "fp8", (16, 16), strategy="block", dequantized_dir=tmp_path / "dq")
        reference = tmp_path / "dq"
    elif quant == "gptq":
        path = make_int_quant_model(reference, tmp_path / "q", tmp_path / "dq", "gptq", group_size=16)
        reference = tmp_path / "dq"
    llm = LLM(str(path), dtype="float32", tensor_parallel_size=tp, enable_expert_parallel=True, block_size=4)
    experts = llm.engine.runner.model.model.layers[1].mlp.experts
    total = load_model_config(path).moe.num_experts
    assert experts.local_experts == total // tp and experts.first_expert == 0 and experts.per_rank == \
        experts.intermediate_size, "the driver holds the first E / tp whole experts"
    try:
        got = _tokens(llm)
    finally:
        llm.engine.shutdown()
    assert got == [hf_greedy(reference, p, GREEDY.max_tokens) for p in PROMPTS]
