"""An FP8 KV cache (vLLM's kv_cache_dtype fp8, fp8_e4m3, fp8_e5m2): every key and value is rounded to the
format when stored, and attention reads them back widened. The reference is transformers with a cache
that rounds what it stores the same way, so greedy tokens must agree exactly, through chunked prefill,
prefix-cache hits and preemption; and the same memory holds as many more blocks as the bytes shrink."""

from __future__ import annotations

import pathlib

import pytest
import torch
from transformers import DynamicCache

from pagoda.engine.config import KV_CACHE_DTYPES
from pagoda.engine.fixtures import add_kv_cache_scales, make_fp8_model, read_weights, write_variant
from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import SamplingParams
from pagoda.kernels.reference import to_cache_dtype
from tests.engine.hf_reference import engine_token_ids, hf_model

PROMPTS = [[17, 42, 99, 7, 256, 3, 88, 12, 5, 61, 9, 14, 300], [300, 4, 4, 19], [17, 42, 99, 7, 256, 3, 88, 12, 5, 2]]
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


class RoundingCache(DynamicCache):
    """transformers' cache, storing keys and values as an FP8 KV cache holds them: each divided by
    its layer's scale (k_scale, v_scale), rounded to the format, multiplied back."""

    def __init__(self, cache_dtype: torch.dtype, scales: list[tuple[float, float]] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cache_dtype = cache_dtype
        self.scales = scales

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        k_scale, v_scale = self.scales[layer_idx] if self.scales else (1.0, 1.0)

        def rounded(x: torch.Tensor, scale: float) -> torch.Tensor:
            return to_cache_dtype(x / scale, self.cache_dtype).to(x.dtype) * scale

        return super().update(rounded(key_states, k_scale), rounded(value_states, v_scale), layer_idx, *args,
                              **kwargs)


@torch.inference_mode()
def hf_greedy_fp8_cache(path: pathlib.Path, prompt: list[int], max_new_tokens: int, cache_dtype: torch.dtype,
                        scales: list[tuple[float, float]] | None = None) -> list[int]:
    model = hf_model(path)
    cache = RoundingCache(cache_dtype, scales, config=model.config)
    out = model(torch.tensor([prompt]), past_key_values=cache, use_cache=True)
    generated = []
    for _ in range(max_new_tokens):
        token = int(out.logits[0, -1].argmax())
        generated.append(token)
        out = model(torch.tensor([[token]]), past_key_values=cache, use_cache=True)
    return generated


@pytest.mark.parametrize(("arch", "kv_cache_dtype"), [("llama", "fp8"), ("qwen3", "fp8_e4m3"), ("qwen2", "fp8_e5m2"),
                                                       ("gemma3", "fp8"), ("deepseek_v3", "fp8")])
def test_fp8_kv_cache_matches_transformers_with_a_rounding_cache(tiny_model, arch: str, kv_cache_dtype: str) -> None:
    path = tiny_model(arch)
    cache_dtype = KV_CACHE_DTYPES[kv_cache_dtype]
    # Blocks of 4 and a budget of 8 tokens: chunked prefill and shared prefix blocks read back from the cache.
    llm = LLM(str(path), dtype="float32", kv_cache_dtype=kv_cache_dtype, block_size=4, max_num_batched_tokens=8)
    assert llm.engine.runner.kv_cache.dtype == cache_dtype
    got = engine_token_ids(llm, PROMPTS, GREEDY)
    assert got == [hf_greedy_fp8_cache(path, p, GREEDY.max_tokens, cache_dtype) for p in PROMPTS]


def test_fp8_kv_cache_under_preemption_and_tensor_parallelism(tiny_model) -> None:
    """Recomputed sequences store the same rounded values; each rank rounds its own heads."""
    path = tiny_model("llama")
    want = [hf_greedy_fp8_cache(path, p, GREEDY.max_tokens, torch.float8_e4m3fn) for p in PROMPTS]
    small = LLM(str(path), dtype="float32", kv_cache_dtype="fp8", block_size=4, num_kv_blocks=9, max_model_len=36)
    scheduler = small.engine.scheduler
    assert engine_token_ids(small, PROMPTS, GREEDY) == want
    assert scheduler.num_preemptions > 0
    sharded = LLM(str(path), dtype="float32", kv_cache_dtype="fp8", tensor_parallel_size=2)
    assert engine_token_ids(sharded, PROMPTS, GREEDY) == want


def test_the_same_memory_holds_more_blocks(tiny_model) -> None:
    """fp32 fixtures: one byte per value instead of four."""
    path = tiny_model("llama")
    budget = 1 << 20
    blocks = {}
    for dtype in ("auto", "fp8"):
        llm = LLM(str(path), dtype="float32", kv_cache_dtype=dtype, kv_cache_memory_bytes=budget)
        blocks[dtype] = llm.engine.runner.num_blocks
        assert llm.engine.runner.kv_cache.numel() * llm.engine.runner.kv_cache.element_size() <= budget
        llm.engine.shutdown()
    assert blocks["fp8"] == 4 * blocks["auto"]


def test_an_unknown_kv_cache_dtype_is_refused(tiny_model) -> None:
    with pytest.raises(ValueError, match="kv_cache_dtype must be one of auto, fp8, fp8_e4m3, fp8_e5m2"):
        LLM(str(tiny_model("llama")), kv_cache_dtype="int8")


# K and V of the fixtures reach about 4: these scales put the largest past e4m3's range (448 * scale),
# so a cache that ignored them would hold other values (fractions exact in fp32, as stored).
SCALES = [(3 / 512, 7 / 1024), (15 / 2048, 5 / 1024)]


@pytest.mark.parametrize(("arch", "one_per_layer", "fp8_weights"), [
    ("llama", False, False), ("qwen3", False, True), ("llama", True, True),
])
def test_kv_cache_scales_from_the_checkpoint(tiny_model, tmp_path, arch: str, one_per_layer: bool,
                                             fp8_weights: bool) -> None:
    """llm-compressor's k_scale/v_scale (kv_cache_scheme, full-precision or FP8 weights) and AutoFP8's
    kv_scale: the cache holds K / k_scale and V / v_scale, as transformers with a cache rounding
    the same way computes; a cache of the model's dtype ignores them."""
    base = tiny_model(arch)
    if fp8_weights:
        base = make_fp8_model(base, tmp_path / "fp8", strategy="tensor" if one_per_layer else "channel",
                              method="fp8" if one_per_layer else "compressed-tensors", dequantized_dir=tmp_path / "plain")
    scales = [(k, k) for k, _ in SCALES] if one_per_layer else SCALES
    path = add_kv_cache_scales(base, tmp_path / "scaled", SCALES, one_per_layer=one_per_layer)
    reference = tmp_path / "plain" if fp8_weights else base
    llm = LLM(str(path), dtype="float32", kv_cache_dtype="fp8", block_size=4, max_num_batched_tokens=8)
    attention = llm.engine.runner.model.model.layers[1].self_attn.attn
    assert (attention.k_scale, attention.v_scale) == scales[1]
    got = engine_token_ids(llm, PROMPTS, GREEDY)
    assert got == [hf_greedy_fp8_cache(reference, p, GREEDY.max_tokens, torch.float8_e4m3fn, scales) for p in PROMPTS]
    assert got != [hf_greedy_fp8_cache(reference, p, GREEDY.max_tokens, torch.float8_e4m3fn) for p in PROMPTS]
    plain_cache = LLM(str(path), dtype="float32", block_size=4)
    assert engine_token_ids(plain_cache, PROMPTS, GREEDY) == engine_token_ids(LLM(str(reference), dtype="float32"),
                                                                              PROMPTS, GREEDY)


def test_per_head_kv_cache_scales_are_refused(tiny_model, tmp_path) -> None:
    path = add_kv_cache_scales(tiny_model("llama"), tmp_path / "scaled", SCALES)
    tensors = read_weights(path)
    tensors["model.layers.0.self_attn.k_scale"] = torch.full((2,), 0.01)
    write_variant(path, tmp_path / "per-head", tensors)
    with pytest.raises(ValueError, match="KV-cache scales per head or channel are not supported"):
        LLM(str(tmp_path / "per-head"), dtype="float32", kv_cache_dtype="fp8")
