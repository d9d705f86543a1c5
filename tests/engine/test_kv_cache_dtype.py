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
from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import SamplingParams
from pagoda.kernels.reference import to_cache_dtype
from tests.engine.hf_reference import engine_token_ids, hf_model

PROMPTS = [[17, 42, 99, 7, 256, 3, 88, 12, 5, 61, 9, 14, 300], [300, 4, 4, 19], [17, 42, 99, 7, 256, 3, 88, 12, 5, 2]]
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


class RoundingCache(DynamicCache):
    """transformers' cache, storing keys and values as an FP8 KV cache holds them."""

    def __init__(self, cache_dtype: torch.dtype, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cache_dtype = cache_dtype

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        def rounded(x: torch.Tensor) -> torch.Tensor:
            return to_cache_dtype(x, self.cache_dtype).to(x.dtype)

        return super().update(rounded(key_states), rounded(value_states), layer_idx, *args, **kwargs)


@torch.inference_mode()
def hf_greedy_fp8_cache(path: pathlib.Path, prompt: list[int], max_new_tokens: int, cache_dtype: torch.dtype) -> list[int]:
    model = hf_model(path)
    cache = RoundingCache(cache_dtype, config=model.config)
    out = model(torch.tensor([prompt]), past_key_values=cache, use_cache=True)
    generated = []
    for _ in range(max_new_tokens):
        token = int(out.logits[0, -1].argmax())
        generated.append(token)
        out = model(torch.tensor([[token]]), past_key_values=cache, use_cache=True)
    return generated


@pytest.mark.parametrize(("arch", "kv_cache_dtype"), [("llama", "fp8"), ("qwen3", "fp8_e4m3"), ("qwen2", "fp8_e5m2"),
                                                       ("gemma3", "fp8")])
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
