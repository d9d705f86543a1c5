"""The whole engine on the Triton kernels, interpreted on the CPU, against Hugging Face greedy decoding.

The kernel tests prove each kernel against its reference; this proves they
are wired into the layers correctly: strided q/k views reaching rotary and
Qwen3's per-head norms, MoE experts run by the grouped GEMM, Gemma 3's sliding
layers and GeGLU, the residual stream through the fused norm, decodes
and prefill chunks sharing a step, prefix-cache hits. On a CPU the ops only
dispatch CUDA tensors to Triton, so the test routes them there by hand.
"""

from __future__ import annotations

import pytest

from pagoda.engine.fixtures import make_fp8_model
from pagoda.engine.int_quant_fixtures import make_bnb_model, make_int_quant_model, make_mxfp4_model
from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import SamplingParams
from tests.engine.hf_reference import hf_greedy
from tests.kernels.conftest import ON_GPU

# Variants of what the default suite already runs on the kernels: `make test-slow` (and .ci/run) runs them.
SLOW = pytest.mark.slow
SHARED = "The quick brown fox jumps over the lazy dog. Hello, my name is"
PROMPTS = [SHARED + " Pagoda", "Once upon a time", SHARED + " tea"]
MAX_TOKENS = 4


@pytest.mark.skipif(ON_GPU, reason="on a GPU the engine selects Triton itself (tests/engine)")
@pytest.mark.parametrize("arch", ["llama3", "gemma3", "deepseek_v3", "nemotron_h_moe", "gemma4",
                                  *(pytest.param(arch, marks=SLOW) for arch in
                                    ("qwen3", "gemma2", "qwen2_moe", "gpt_oss", "qwen3_5", "granitemoehybrid",
                                     "gemma4_moe", "kimi_linear"))])
def test_greedy_matches_hf_on_triton_kernels(arch: str, tiny_model, triton_everywhere: None) -> None:
    path = tiny_model(arch)
    # A token budget of 7 chunks the prompts, so steps mix decodes with prefill chunks and prefix hits.
    llm = LLM(str(path), device="cpu", max_num_batched_tokens=7, block_size=4, max_num_seqs=3)
    outputs = llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True))
    for prompt, out in zip(PROMPTS, outputs):
        assert list(out.outputs[0].token_ids) == hf_greedy(path, llm.tokenizer.encode(prompt), MAX_TOKENS), prompt


@pytest.mark.skipif(ON_GPU, reason="on a GPU the engine selects Triton itself (tests/engine)")
@pytest.mark.parametrize(("arch", "options"), [
    ("qwen3", {"block": (16, 32)}),
    pytest.param("qwen3_moe", {"method": "compressed-tensors", "strategy": "channel"}, marks=SLOW),
])
def test_fp8_checkpoint_on_triton_kernels(arch: str, options: dict, tiny_model, tmp_path,
                                          triton_everywhere: None) -> None:
    """Every projection through the FP8 GEMM, fused parts and all (block scales; per-channel scales,
    experts through the fused MoE kernel), still Hugging Face's greedy tokens on the stored weights."""
    path = make_fp8_model(tiny_model(arch), tmp_path / "fp8", dequantized_dir=tmp_path / "plain", **options)
    llm = LLM(str(path), device="cpu", max_num_batched_tokens=7, block_size=4, max_num_seqs=3)
    outputs = llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True))
    for prompt, out in zip(PROMPTS, outputs):
        want = hf_greedy(tmp_path / "plain", llm.tokenizer.encode(prompt), MAX_TOKENS)
        assert list(out.outputs[0].token_ids) == want, prompt


@pytest.mark.skipif(ON_GPU, reason="on a GPU the engine selects Triton itself (tests/engine)")
@pytest.mark.parametrize(("arch", "method", "options"), [
    ("qwen3", "gptq", {"act_order": True}), ("qwen3_moe", "gptq", {}),
    *(pytest.param(*case, marks=SLOW) for case in (("qwen3", "awq", {"group_size": 32}), ("llama3", "bitsandbytes", {}),
                                                   ("gpt_oss", "mxfp4", {}))),
])
def test_int4_checkpoint_on_triton_kernels(arch: str, method: str, options: dict, tiny_model, tmp_path,
                                           triton_everywhere: None) -> None:
    """Every projection through the integer GEMM (GPTQ with act-order, AWQ, bitsandbytes' NF4 codebook) and
    packed experts through the fused MoE kernel (GPTQ, GPT-OSS's MXFP4 with FP4's codebook): Hugging Face's
    greedy tokens on the dequantized weights."""
    if method == "bitsandbytes":
        path = make_bnb_model(tiny_model(arch), tmp_path / "q", tmp_path / "dq")
    elif method == "mxfp4":
        path = make_mxfp4_model(tiny_model(arch), tmp_path / "q", tmp_path / "dq")
    else:
        path = make_int_quant_model(tiny_model(arch), tmp_path / "q", tmp_path / "dq", method, **options)
    llm = LLM(str(path), device="cpu", max_num_batched_tokens=7, block_size=4, max_num_seqs=3)
    outputs = llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True))
    for prompt, out in zip(PROMPTS, outputs):
        assert list(out.outputs[0].token_ids) == hf_greedy(tmp_path / "dq", llm.tokenizer.encode(prompt), MAX_TOKENS)


@pytest.mark.skipif(ON_GPU, reason="on a GPU the engine selects Triton itself (tests/engine)")
@pytest.mark.parametrize(("arch", "scaled"), [("llama3", True), pytest.param("llama3", False, marks=SLOW),
                                              pytest.param("gemma3", False, marks=SLOW)])
def test_fp8_kv_cache_on_triton_kernels(arch: str, scaled: bool, tiny_model, tmp_path, triton_everywhere: None) -> None:
    """Keys and values stored as FP8 by the store kernel and widened by the attention kernels, with the
    checkpoint's KV-cache scales or without: transformers' greedy tokens with a cache that rounds the
    same way."""
    import torch

    from pagoda.engine.fixtures import add_kv_cache_scales
    from tests.engine.test_kv_cache_dtype import SCALES, hf_greedy_fp8_cache

    reference = tiny_model(arch)
    path = add_kv_cache_scales(reference, tmp_path / "scaled", SCALES) if scaled else reference
    llm = LLM(str(path), device="cpu", max_num_batched_tokens=7, block_size=4, max_num_seqs=3, kv_cache_dtype="fp8")
    outputs = llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True))
    for prompt, out in zip(PROMPTS, outputs):
        want = hf_greedy_fp8_cache(reference, llm.tokenizer.encode(prompt), MAX_TOKENS, torch.float8_e4m3fn,
                                   SCALES if scaled else None)
        assert list(out.outputs[0].token_ids) == want, prompt


@pytest.mark.skipif(ON_GPU, reason="on a GPU the engine selects Triton itself (tests/engine)")
@SLOW
def test_images_attending_both_ways_on_triton_kernels(tmp_path, triton_everywhere: None) -> None:
    """Gemma 3's images through the prefill kernel's per-token key limits (each image token sees its
    whole image), in chunks that stop before an image, with prefix hits: transformers' tokens."""
    from pagoda.engine.fixtures import make_tiny_gemma3_multimodal
    from tests.engine.test_image_prompts import hf_greedy, picture

    path = make_tiny_gemma3_multimodal(tmp_path / "gemma3")
    llm = LLM(str(path), device="cpu", max_num_batched_tokens=20, block_size=4, max_num_seqs=3)
    prompt = "USER: <start_of_image>\nWhat is in the picture? ASSISTANT:"
    images = [picture(0), picture(1), picture(0)]
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outputs = llm.generate([{"prompt": prompt, "multi_modal_data": {"image": image}} for image in images], params)
    for out, image in zip(outputs, images):
        assert list(out.outputs[0].token_ids) == hf_greedy(path, out.prompt_token_ids, [image])[:MAX_TOKENS]


@pytest.mark.skipif(ON_GPU, reason="on a GPU the engine selects Triton itself (tests/engine)")
def test_encoder_on_triton_kernels(tmp_path, triton_everywhere: None) -> None:
    """A BERT embedding model through the prefill kernel, every token's key limit at its prompt's end:
    transformers' mean-pooled embeddings."""
    import torch

    from pagoda.engine.encoder_fixtures import make_tiny_encoder
    from tests.engine.test_encoders import TEXTS, _reference_embeddings

    path = make_tiny_encoder(tmp_path / "bert", "bert", pooling="mean")
    llm = LLM(str(path), device="cpu", block_size=4, max_num_seqs=3)
    torch.testing.assert_close(torch.tensor(llm.embed(TEXTS)), _reference_embeddings(path, "mean"), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(ON_GPU, reason="on a GPU the engine selects Triton itself (tests/engine)")
@SLOW
def test_multimodal_rope_on_triton_kernels(tmp_path, triton_everywhere: None) -> None:
    """Qwen2.5-VL's three positions per prompt token through the rotary kernel (each token's own
    cos/sin row), images cut by chunks, decodes at the shifted positions: transformers' tokens."""
    from pagoda.engine.qwen_vl_fixtures import make_tiny_qwen_vl
    from tests.engine.test_image_prompts import hf_greedy, picture
    from tests.engine.test_qwen_vl import prompt

    path = make_tiny_qwen_vl(tmp_path / "qwen2.5-vl", "2.5")
    llm = LLM(str(path), device="cpu", max_num_batched_tokens=20, block_size=4, max_num_seqs=3)
    requests = [[picture(0)], [picture(1, (70, 30)), picture(2, (64, 64))], [picture(0)]]
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outputs = llm.generate([{"prompt": prompt(len(images)), "multi_modal_data": {"image": images}}
                            for images in requests], params)
    for out, images in zip(outputs, requests):
        assert list(out.outputs[0].token_ids) == hf_greedy(path, out.prompt_token_ids, images)[:MAX_TOKENS]
