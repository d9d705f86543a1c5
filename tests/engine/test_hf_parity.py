"""Token-for-token agreement with Hugging Face transformers, under every scheduling regime.

Greedy decoding on fp32 weights must reproduce transformers exactly, whatever
the batch looks like: mixed prompt lengths, shared prefixes served from the
prefix cache, prompts chunked over many steps by a tiny token budget, and a
block pool so small that sequences are preempted and recomputed.
"""

from __future__ import annotations

import pytest

from pagoda.engine.fixtures import FIXTURE_ARCHS
from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import SamplingParams
from tests.engine.hf_reference import hf_greedy, hf_logprobs

SHARED = "The quick brown fox jumps over the lazy dog. Hello, my name is Pagoda, and I serve"
PROMPTS = [
    "Hello",
    "Once upon a time there was a little model",
    SHARED + " language models",
    SHARED + " tea in the morning",
    "東京は日本の首都です。🚀 launch",
    "def fib(n: int) -> int:\n    return",
    SHARED,
]
MAX_TOKENS = 12

REGIMES = {
    "default": {},
    "no-prefix-cache-tiny-budget": {"enable_prefix_caching": False, "max_num_batched_tokens": 5, "block_size": 4},
    "chunked-with-prefix-cache": {"max_num_batched_tokens": 9, "block_size": 4, "max_num_seqs": 3},
    # 20 blocks of 4 tokens cannot hold all the sequences at once: preemption must happen.
    "preemption": {"num_kv_blocks": 20, "block_size": 4, "max_model_len": 80},
}


def _greedy() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)


@pytest.mark.parametrize("arch", FIXTURE_ARCHS)
@pytest.mark.parametrize("regime", REGIMES)
def test_greedy_matches_transformers(tiny_model, arch: str, regime: str) -> None:
    path = tiny_model(arch)
    options = dict(REGIMES[regime])
    if arch in ("gemma2", "gemma3", "ministral", "olmo3", "gpt_oss", "cohere2") and "num_kv_blocks" in options:
        # Their sliding and full layers take blocks of one layer each (kv_cache_layout.py): the same
        # memory is twice the blocks, and one more is the sliding group's null block.
        options["num_kv_blocks"] = 2 * options["num_kv_blocks"] + 1
    if arch in ("gemma4", "gemma4_moe", "mimo_v2_flash") and "num_kv_blocks" in options:
        # Three groups of one layer each (two sliding and one full, or one and two): thrice the blocks (a
        # few more, so one sequence of max_model_len fits and the others still outgrow the pool).
        options["num_kv_blocks"] = 3 * options["num_kv_blocks"] + 4
    if arch == "exaone_moe" and "num_kv_blocks" in options:
        # Four groups of one layer each (three sliding, one full): the blocks one sequence of max_model_len
        # needs, and a few more, so the others outgrow the pool.
        options["num_kv_blocks"] = 88
    if arch == "starcoder2" and "num_kv_blocks" in options:
        # Every layer slides (window 8): a sequence holds at most 5 blocks in steps of 8 tokens, so
        # preemption needs a pool that small (6 blocks and the null block).
        options.update(num_kv_blocks=7, max_num_batched_tokens=8)
    llm = LLM(str(path), dtype="float32", **options)
    outputs = llm.generate(PROMPTS, _greedy())
    for out in outputs:
        expected = hf_greedy(path, out.prompt_token_ids, MAX_TOKENS)
        assert out.outputs[0].token_ids == expected, (regime, out.prompt)
        assert out.outputs[0].finish_reason == "length"
    if regime == "preemption":
        assert llm.engine.scheduler.num_preemptions > 0
        assert sum(o.metrics.num_preemptions for o in outputs) > 0
    # Every block is back in the pool once all requests are done.
    assert llm.engine.block_manager.num_free_blocks == llm.engine.block_manager.num_usable


def test_prefix_cache_hits_and_same_output(tiny_model) -> None:
    path = tiny_model("llama")
    llm = LLM(str(path), dtype="float32", block_size=4)
    first = llm.generate([SHARED + " language models"], _greedy())[0]
    second = llm.generate([SHARED + " tea in the morning"], _greedy())[0]
    assert first.num_cached_tokens == 0
    # The shared text covers several full blocks; all but the unshared tail are hits.
    assert second.num_cached_tokens >= 4 * (len(llm.tokenizer.encode(SHARED)) // 4 - 1)
    stats = llm.engine.block_manager.stats
    assert stats.hits == second.num_cached_tokens and stats.queries > stats.hits
    assert second.outputs[0].token_ids == hf_greedy(path, second.prompt_token_ids, MAX_TOKENS)


@pytest.mark.parametrize("variant", [{"sharded": True}, {"tie_word_embeddings": True}, {"sharded": True, "tie_word_embeddings": True}])
def test_checkpoint_variants(tiny_model, variant: dict) -> None:
    path = tiny_model("qwen2", **variant)
    llm = LLM(str(path), dtype="float32")
    out = llm.generate(PROMPTS[:3], _greedy())
    for o in out:
        assert o.outputs[0].token_ids == hf_greedy(path, o.prompt_token_ids, MAX_TOKENS)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_reduced_precision_checkpoints_load_and_agree(tiny_model, dtype: str) -> None:
    """Checkpoints stored in fp16/bf16 run in their own dtype ('auto') and track the fp32 reference."""
    path = tiny_model("llama3", dtype=dtype)
    llm = LLM(str(path))
    assert str(llm.engine.model_config.dtype) == f"torch.{dtype}"
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    outs = llm.generate(PROMPTS, params)
    agree = sum(o.outputs[0].token_ids[0] == hf_greedy(path, o.prompt_token_ids, 1)[0] for o in outs)
    # Rounding may flip a near-tie, but nearly every first token must agree.
    assert agree >= len(PROMPTS) - 1


@pytest.mark.parametrize("arch", ["gemma3", "gemma4", "gemma4_moe"])
def test_bf16_gemma_norms_round_as_transformers(tiny_model, arch: str) -> None:
    """Gemma's norms multiply in fp32 and round once (Gemma 3's by 1 + weight, Gemma 4's by the weight):
    bf16 prompt logprobs are transformers' bf16 ones (rounding the weight to bf16, or the row before the
    weight, moves them)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = tiny_model(arch, dtype="bfloat16")
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16).eval()
    for out in LLM(str(path)).generate(PROMPTS[2:4], params):
        ids = out.prompt_token_ids
        with torch.inference_mode():
            expected = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        ours = [next(iter(p.values())).logprob for p in out.prompt_logprobs[1:]]
        theirs = [expected[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
        assert max(abs(a - b) for a, b in zip(ours, theirs)) < 0.05


LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0, 1.3, 1.7, 2.2, 3.0, 4.0],
            "long_factor": [2.0, 3.0, 5.0, 8.0, 13.0, 21.0]}


def test_longrope_short_and_long_factors(tiny_model) -> None:
    """Phi-3.5/4-mini's LongRoPE past its original context (32 here, of 2048): as transformers does, a
    prompt longer than it rotates every token with the long factors, a shorter one its tokens from
    there on (generation crossing it), both with the extension's attention factor. A long prompt
    sharing a short one's first blocks computes its own (the prefix cache keeps them apart), in
    chunks, and both orders agree."""
    path = tiny_model("phi3", rope_parameters=LONGROPE, original_max_position_embeddings=32)
    short = PROMPTS[0]  # about 15 tokens, 40 generated: past 32
    long = short + " and then the scheduler batches requests together so the accelerator is never idle"
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    for order in ([short, long], [long, short]):
        llm = LLM(str(path), dtype="float32", block_size=4, max_num_batched_tokens=16)
        assert llm.engine.max_model_len == 2048
        outputs = [llm.generate(prompt, params)[0] for prompt in order]
        lengths = {len(out.prompt_token_ids) > 32 for out in outputs}
        assert lengths == {False, True}, "one prompt within the original context, one past it"
        for out in outputs:
            assert out.outputs[0].token_ids == hf_greedy(path, out.prompt_token_ids, 40), out.prompt


@pytest.mark.parametrize("naming", ["language_model.model", "model.language_model"])
def test_multimodal_gemma3_checkpoint_served_as_text(tmp_path, naming: str) -> None:
    """Gemma 3 4B and up ship as Gemma3ForConditionalGeneration: text prompts through the language model,
    under either naming of the tensors (the vision tower's loaded too); settings the hub's sparse
    text_config leaves out come from transformers' defaults."""
    import json

    from safetensors.torch import load_file, save_file

    from pagoda.engine.fixtures import make_tiny_gemma3_multimodal

    path = make_tiny_gemma3_multimodal(tmp_path / "gemma3-mm")
    config = json.loads((path / "config.json").read_text())
    for default in ("rms_norm_eps", "hidden_activation", "attention_bias", "final_logit_softcapping"):
        config["text_config"].pop(default, None)  # the hub's configs omit what equals the default
    (path / "config.json").write_text(json.dumps(config))
    if naming == "model.language_model":  # newer conversions: model.language_model.*, model.vision_tower.*
        tensors = load_file(str(path / "model.safetensors"))
        renamed = {}
        for name, tensor in tensors.items():
            if name.startswith("language_model.model."):
                name = "model.language_model." + name[len("language_model.model."):]
            elif name.startswith("language_model.lm_head."):
                name = name[len("language_model."):]
            elif name.startswith(("vision_tower.", "multi_modal_projector.")):
                name = "model." + name
            renamed[name] = tensor
        save_file(renamed, str(path / "model.safetensors"))
    llm = LLM(str(path), dtype="float32", max_num_batched_tokens=17, block_size=4)  # an image's 16 tokens fit
    assert llm.engine.model_config.num_layers == 2
    for out in llm.generate(PROMPTS, _greedy()):
        assert out.outputs[0].token_ids == hf_greedy(path, out.prompt_token_ids, MAX_TOKENS), out.prompt


def test_granite_logprobs_see_the_logits_scaling(tiny_model) -> None:
    """Granite divides its logits by logits_scaling: greedy tokens cannot show it, logprobs do."""
    path = tiny_model("granite")
    llm = LLM(str(path), dtype="float32")
    ids = llm.tokenizer.encode(PROMPTS[1])
    out = llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0))[0]
    reference = hf_logprobs(path, ids)
    for pos in range(1, len(ids)):
        assert out.prompt_logprobs[pos][ids[pos]].logprob == pytest.approx(float(reference[pos - 1, ids[pos]]), abs=1e-4)


def test_gemma2_soft_capping_is_applied(tiny_model, tmp_path) -> None:
    """The fixture's caps bend its logits. Without the attention cap the same weights generate other
    tokens, so the parity above shows it applied inside the kernels; the LM head's cap is monotone
    (greedy tokens cannot show it), so its logprobs are checked against transformers'."""
    from pagoda.engine.fixtures import write_variant

    path = tiny_model("gemma2")
    prompt = [2, 17, 42, 99, 7, 256, 3]
    no_attention_cap = write_variant(path, tmp_path / "no-attention-cap", attn_logit_softcapping=None)
    assert hf_greedy(no_attention_cap, prompt, MAX_TOKENS) != hf_greedy(path, prompt, MAX_TOKENS)
    llm = LLM(str(path), dtype="float32")
    out = llm.generate([{"prompt_token_ids": prompt}], SamplingParams(max_tokens=1, prompt_logprobs=0))[0]
    capped = hf_logprobs(path, prompt)
    uncapped = hf_logprobs(write_variant(path, tmp_path / "no-final-cap", final_logit_softcapping=None), prompt)
    for pos in range(1, len(prompt)):
        got = out.prompt_logprobs[pos][prompt[pos]].logprob
        assert got == pytest.approx(capped[pos - 1][prompt[pos]].item(), abs=1e-4)
        assert abs(got - uncapped[pos - 1][prompt[pos]].item()) > 1e-2


@pytest.mark.parametrize("rope", [
    {"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 4.0, "original_max_position_embeddings": 16},
    {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0, "original_max_position_embeddings": 16,
     "mscale": 1.0, "mscale_all_dim": 0.5, "beta_fast": 16},
], ids=["qwen", "deepseek-mscale"])
def test_yarn_rope_scaling_matches_transformers(tiny_model, rope: dict) -> None:
    """YaRN (Qwen3's long-context setting), with an original context of 16 that the 40-token prompts
    outgrow: transformers' tokens, which plain rope on the same weights does not give."""
    path = tiny_model("qwen3", rope_parameters=rope)
    prompt = list(range(30, 70))
    llm = LLM(str(path), dtype="float32")
    got = llm.generate([{"prompt_token_ids": prompt}], _greedy())[0].outputs[0].token_ids
    assert got == hf_greedy(path, prompt, MAX_TOKENS)
    plain = tiny_model("qwen3", rope_parameters={"rope_type": "default", "rope_theta": rope["rope_theta"]})
    assert got != hf_greedy(plain, prompt, MAX_TOKENS)


@pytest.mark.parametrize("arch", ["glm", "seed_oss", "ernie4_5"])
def test_llama_relatives_match_transformers(tiny_model, arch: str) -> None:
    """GLM (GLM-4 without its post-norms), Seed-OSS (no o_proj bias beside q/k/v biases), ERNIE 4.5
    (interleaved rotary): one chunked, prefix-cached run each."""
    path = tiny_model(arch)
    llm = LLM(str(path), dtype="float32", max_num_batched_tokens=9, block_size=4)
    for out in llm.generate(PROMPTS, _greedy()):
        assert out.outputs[0].token_ids == hf_greedy(path, out.prompt_token_ids, MAX_TOKENS), out.prompt


def test_cohere_logit_scale_reaches_the_logprobs(tiny_model) -> None:
    """Command-R's logit_scale cannot show in greedy tokens: its prompt logprobs are transformers'."""
    path = tiny_model("cohere")
    prompt = [2, 17, 42, 99, 7, 256, 3]
    out = LLM(str(path), dtype="float32").generate([{"prompt_token_ids": prompt}],
                                                    SamplingParams(max_tokens=1, prompt_logprobs=0))[0]
    want = hf_logprobs(path, prompt)
    for pos in range(1, len(prompt)):
        assert out.prompt_logprobs[pos][prompt[pos]].logprob == pytest.approx(want[pos - 1][prompt[pos]].item(),
                                                                               abs=1e-4)


@pytest.mark.parametrize("tp", [1, 2, pytest.param(4, marks=pytest.mark.slow)])
def test_command_r_plus_qk_norms(tiny_model, tp: int) -> None:
    """Command R+'s per-head q/k LayerNorms, each head with its own weight: a rank holds its heads' (at
    tp=4 each of the 2 KV heads' on two ranks)."""
    path = tiny_model("cohere", use_qk_norm=True)
    llm = LLM(str(path), dtype="float32", tensor_parallel_size=tp, max_num_batched_tokens=9, block_size=4)
    try:
        outputs = llm.generate(PROMPTS, _greedy())
    finally:
        llm.engine.shutdown()
    for out in outputs:
        assert out.outputs[0].token_ids == hf_greedy(path, out.prompt_token_ids, MAX_TOKENS), out.prompt


def test_exaone4_matches_transformers(tiny_model) -> None:
    """EXAONE 4.0: a sliding local layer with rotary, a global one without (NoPE), post-norms."""
    path = tiny_model("exaone4")
    llm = LLM(str(path), dtype="float32", max_num_batched_tokens=9, block_size=4)
    assert [g.window for g in llm.engine.runner.layout.groups] == [None, 8]
    for out in llm.generate(PROMPTS, _greedy()):
        assert out.outputs[0].token_ids == hf_greedy(path, out.prompt_token_ids, MAX_TOKENS), out.prompt
