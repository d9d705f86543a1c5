"""Sliding-window layers in KV-cache groups of their own (kv_cache_layout.py, vLLM's hybrid KV-cache
manager): they give back the blocks that leave their window, so a cache holds sequences far longer
than its tokens, and Gemma 3 more sequences in the same memory; greedy output stays transformers'."""

from __future__ import annotations

import pytest
import torch

from pagoda.engine.kv_cache_layout import KVCacheGroup, plan_kv_cache
from pagoda.engine.layers.attention import kv_block_bytes
from pagoda.engine.llm import LLM
from pagoda.engine.model_config import load_model_config
from pagoda.engine.sampling_params import SamplingParams
from tests.engine.hf_reference import engine_token_ids, hf_greedy


def test_layouts() -> None:
    """Gemma 3 27B's 62 layers, every 6th global: one group of its 10 global layers and six of its
    sliding ones, 10 layers to a block (the last sliding group padded); uniform models keep one group."""
    windows = [None if (i + 1) % 6 == 0 else 1024 for i in range(62)]
    layout = plan_kv_cache(windows)
    assert layout.group_size == 10 and len(layout.groups) == 7
    assert layout.groups[0] == KVCacheGroup(tuple(range(5, 62, 6)), None)
    assert layout.groups[-1].layers == (60, 61) and layout.groups[-1].window == 1024
    assert layout.place(11) == (0, 1) and layout.place(0) == (1, 0)
    assert sorted(i for g in layout.groups for i in g.layers) == list(range(62))
    # A 32k-token sequence: 2048 blocks of 16 in the global group, 65 + 128 per sliding group.
    assert layout.blocks_for(32768, 2048, 16) == 2048 + 6 * (64 + 1 + 128)
    assert plan_kv_cache([None] * 4).groups == (KVCacheGroup((0, 1, 2, 3), None),)
    assert plan_kv_cache([8] * 4).groups == (KVCacheGroup((0, 1, 2, 3), 8),)
    assert plan_kv_cache(windows, hybrid=False).groups == (KVCacheGroup(tuple(range(62)), None),)


def test_a_sequence_longer_than_the_cache_when_every_layer_slides(tiny_model) -> None:
    """Mistral v0.1's kind (every layer a window of 8): 7 blocks of 4 tokens serve 20 + 60 tokens,
    and the output is transformers'; keeping every block, the same cache cannot hold max_model_len."""
    path = tiny_model("mistral", sliding_window=8)
    prompt = list(range(40, 60))
    options = {"dtype": "float32", "block_size": 4, "num_kv_blocks": 8, "max_model_len": 128,
               "max_num_batched_tokens": 8}
    llm = LLM(str(path), **options)
    assert llm.engine.block_manager.num_usable * 4 < len(prompt) + 60
    got = engine_token_ids(llm, [prompt], SamplingParams(temperature=0.0, max_tokens=60, ignore_eos=True))
    assert got == [hf_greedy(path, prompt, 60)]
    with pytest.raises(ValueError, match="KV cache holds"):
        LLM(str(path), disable_hybrid_kv_cache_manager=True, **options)


PROMPTS = [list(range(3 + 40 * i, 3 + 40 * i + n)) for i, n in enumerate((30, 26, 33, 28))]  # no shared prefix
GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)


def test_gemma3_holds_more_in_the_same_memory(tiny_model) -> None:
    """Gemma 3's sliding layer (window 8) and global layer each take blocks of one layer: under one
    memory budget, four 46-token sequences run without the preemptions that keeping every block costs,
    both giving transformers' tokens."""
    path = tiny_model("gemma3")
    want = [hf_greedy(path, p, GREEDY.max_tokens) for p in PROMPTS]
    cfg = load_model_config(path)
    # 40 blocks of 4 tokens over both layers: 48 are needed to keep all four sequences' blocks at once.
    budget = 40 * kv_block_bytes(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, torch.float32, 4)
    runs = {}
    for hybrid in (True, False):
        llm = LLM(str(path), dtype="float32", block_size=4, kv_cache_memory_bytes=budget, max_model_len=64,
                  disable_hybrid_kv_cache_manager=not hybrid)
        runner = llm.engine.runner
        assert runner.kv_cache.numel() * runner.kv_cache.element_size() <= budget
        assert [g.window for g in runner.layout.groups] == ([None, 8] if hybrid else [None])
        scheduler = llm.engine.scheduler
        assert engine_token_ids(llm, PROMPTS, GREEDY) == want
        runs[hybrid] = scheduler.num_preemptions
    assert runs[False] > 0 and runs[True] == 0


def test_prefix_cache_hits_in_a_sliding_group(tiny_model) -> None:
    """A second request sharing 24 tokens hits them in both groups (the sliding group's blocks inside
    the window of the hit, still cached though given back), and generates transformers' tokens."""
    path = tiny_model("gemma3")
    shared = list(range(100, 124))
    prompts = [shared + [7, 8, 9], shared + [11, 12]]
    llm = LLM(str(path), dtype="float32", block_size=4, max_num_batched_tokens=64)
    got = [engine_token_ids_kept(llm, [p]) for p in prompts]
    assert llm.engine.block_manager.stats.hits == 24
    assert got == [[hf_greedy(path, p, GREEDY.max_tokens)] for p in prompts]
    llm.engine.shutdown()


def engine_token_ids_kept(llm: LLM, prompts: list[list[int]]) -> list[list[int]]:
    """As engine_token_ids, leaving the engine (and its prefix cache) running."""
    return [o.outputs[0].token_ids for o in llm.generate([{"prompt_token_ids": p} for p in prompts], GREEDY)]


def test_a_draft_model_over_a_hybrid_target(tiny_model, tmp_path) -> None:
    """Gemma 3 keeps its sliding layer's table when a draft model (its own first layer) drafts: the draft's
    cache follows the global layer's blocks, and the output is the target's plain greedy output."""
    from pagoda.engine.fixtures import make_truncated_model

    path = tiny_model("gemma3")
    draft = make_truncated_model(path, tmp_path / "draft", num_layers=1)
    llm = LLM(str(path), dtype="float32", block_size=4, max_num_batched_tokens=16,
              speculative_config={"model": str(draft), "num_speculative_tokens": 3})
    assert [g.window for g in llm.engine.runner.layout.groups] == [None, 8]
    assert llm.engine.runner.draft.table_group == 0
    got = engine_token_ids_kept(llm, PROMPTS)
    assert llm.engine.spec_stats.draft_tokens > 0
    assert got == [hf_greedy(path, p, GREEDY.max_tokens) for p in PROMPTS]
    llm.engine.shutdown()
