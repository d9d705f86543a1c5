"""Gemma 4: layers that share K/V keep no cache and read their owner's, global layers with wider heads
view a wider cache row, proportional RoPE follows transformers, and the hub's
multimodal checkpoints serve their language model (greedy parity in every scheduling regime, and under
tensor parallelism, is in test_hf_parity's and test_tensor_parallel's matrices, bf16 logprobs in the
former; images in test_image_prompts.py's)."""

from __future__ import annotations

import pytest
import torch

from pagoda.engine.llm import LLM
from pagoda.engine.model_config import RopeConfig
from pagoda.engine.models.gemma4 import Gemma4Attention
from pagoda.engine.sampling_params import SamplingParams
from pagoda.engine.vision_fixtures import make_tiny_gemma4_multimodal
from tests.engine.hf_reference import hf_greedy
from tests.engine.test_hf_parity import PROMPTS

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def _attention(llm: LLM) -> list[Gemma4Attention]:
    return [layer.self_attn for layer in llm.engine.runner.model.model.layers]


def test_layers_sharing_kv_keep_no_cache_and_read_their_owners(tiny_model) -> None:
    """The gemma4 fixture's layers: sliding, sliding, global, then a sliding and a global layer reading
    layers 1's and 2's K/V. Only the first three take cache slots, each a row as wide as a global layer's
    (2 heads of 32), the sliding layers viewing 2 heads of 16 of it; the sharers' views are their owners'."""
    llm = LLM(str(tiny_model("gemma4")), dtype="float32", block_size=4)
    runner, attention = llm.engine.runner, _attention(llm)
    assert runner.layout.num_layers == 3 and runner.kv_row == (1, 64)
    assert runner.kv_cache.shape[-2:] == (1, 64)
    assert tuple(attention[0].attn.k_cache.shape[-2:]) == (2, 16) and tuple(attention[2].attn.k_cache.shape[-2:]) == (2, 32)
    for sharer, owner in ((3, 1), (4, 2)):
        assert attention[sharer].attn.kv_owner is attention[owner].attn
        assert attention[sharer].attn.k_cache.data_ptr() == attention[owner].attn.k_cache.data_ptr()
        assert attention[sharer].attn.kv_group == attention[owner].attn.kv_group
        assert not hasattr(attention[sharer].qkv_proj, "k_proj") and attention[sharer].k_norm is None
        assert attention[sharer].qkv_proj.weight.shape[0] == attention[owner].q_size
    # The sharers' MLPs are twice as wide (use_double_wide_mlp).
    layers = llm.engine.runner.model.model.layers
    assert layers[3].mlp.down_proj.weight.shape[1] == 2 * layers[0].mlp.down_proj.weight.shape[1]
    out = llm.generate(PROMPTS[2], GREEDY)[0]
    assert out.outputs[0].token_ids == hf_greedy(tiny_model("gemma4"), out.prompt_token_ids, 12)


@pytest.mark.parametrize("speculative", [False, True])
def test_layers_sharing_kv_compute_only_the_rows_the_step_reads(tiny_model, speculative: bool) -> None:
    """From the first layer that reads another's K/V on, nothing writes K/V: only the rows whose logits the
    step takes go on (a finished prompt's last row, every row of a prompt whose logprobs are asked, each
    decode, a speculative run), and a chunk that samples nothing stops there. Outputs stay transformers',
    in batches that mix all of these with chunked prefill."""
    from tests.engine.hf_reference import hf_logprobs

    path = tiny_model("gemma4")
    spec = {"speculative_config": {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 2}} \
        if speculative else {}
    llm = LLM(str(path), dtype="float32", block_size=4, max_num_batched_tokens=24, **spec)
    layers = llm.engine.runner.model.model.layers
    assert llm.engine.runner.model.model.first_sharing == 3
    rows_in: dict[int, list[int]] = {0: [], 3: []}  # rows into the first layer, and into the first sharing one
    for i in rows_in:
        layers[i].register_forward_pre_hook(lambda _, args, i=i: rows_in[i].append(args[1].shape[0]))
    logprobs = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True, prompt_logprobs=0)
    outs = llm.generate(PROMPTS[:4], [GREEDY, logprobs, GREEDY, GREEDY])
    for out in outs:
        assert out.outputs[0].token_ids == hf_greedy(path, out.prompt_token_ids, len(out.outputs[0].token_ids))
    ids = outs[1].prompt_token_ids
    expected = hf_logprobs(path, ids)
    ours = [next(iter(p.values())).logprob for p in outs[1].prompt_logprobs[1:]]
    assert max(abs(a - expected[i, ids[i + 1]].item()) for i, a in enumerate(ours)) < 1e-4
    # Every prompt row through the first layers; in the sharing ones, the logprob prompt's rows and few others.
    assert sum(rows_in[0]) >= sum(len(o.prompt_token_ids) - o.num_cached_tokens for o in outs)
    # (a row per output token, or per proposed token too when speculating; the logprob prompt's every row).
    per_token = 4 if speculative else 1
    assert sum(rows_in[3]) <= len(ids) + per_token * sum(len(o.outputs[0].token_ids) for o in outs)
    assert sum(rows_in[3]) < sum(rows_in[0])


def test_global_layers_whose_values_are_their_keys(tiny_model) -> None:
    """gemma4_moe's global layers (attention_k_eq_v): one KV head of 32 and no value rows in the projection."""
    llm = LLM(str(tiny_model("gemma4_moe")), dtype="float32")
    sliding, full = _attention(llm)[:2]
    assert (sliding.values, full.values) == (True, False)
    assert full.qkv_proj.weight.shape[0] == full.q_size + 32 and full.attn.num_kv_heads == 1
    assert llm.engine.runner.kv_row == (1, 32)


def test_proportional_rope_matches_transformers() -> None:
    """Gemma 4's global layers: a quarter of the frequencies turn, pairing dims i and i + head_dim/2 across
    the whole head (not the first quarter of the dims, as partial rotary would)."""
    from transformers import Gemma4TextConfig
    from transformers.models.gemma4.modeling_gemma4 import Gemma4TextRotaryEmbedding, apply_rotary_pos_emb

    from pagoda.engine.layers.rotary import RotaryEmbedding

    config = Gemma4TextConfig(head_dim=16, global_head_dim=32, layer_types=["sliding_attention", "full_attention"],
                              num_hidden_layers=2)
    rope = RopeConfig(theta=1000000.0, scaling_type="proportional", partial_rotary_factor=0.25)
    ours = RotaryEmbedding(32, 4096, rope)
    positions = torch.tensor([0, 1, 7, 100, 4000])
    q, k = torch.randn(5, 4, 32), torch.randn(5, 2, 32)
    q_ours, k_ours = ours(positions, q, k)
    cos, sin = Gemma4TextRotaryEmbedding(config)(q, positions[None], "full_attention")
    torch.testing.assert_close(q_ours, apply_rotary_pos_emb(q[None], cos, sin, unsqueeze_dim=2)[0])
    torch.testing.assert_close(k_ours, apply_rotary_pos_emb(k[None], cos, sin, unsqueeze_dim=2)[0])
    # Only the first 4 frequencies turn: dims 0..3 and their partners 16..19 move, the rest stay.
    moved = (q_ours - q).abs().amax(dim=(0, 1)) > 0
    assert moved.nonzero().flatten().tolist() == [0, 1, 2, 3, 16, 17, 18, 19]


@pytest.mark.parametrize("vision", [True, False])
def test_multimodal_checkpoint_serves_its_language_model(tmp_path, tiny_model, vision: bool) -> None:
    """Gemma4ForConditionalGeneration as the hub ships it: the audio tower is skipped, the language model
    (model.language_model.*) answers text as transformers' multimodal class does and as the text fixture
    holding the same weights; a checkpoint without a vision tower refuses an image by name (images:
    test_image_prompts.py)."""
    path = make_tiny_gemma4_multimodal(tmp_path / "gemma4-mm", vision=vision)
    llm = LLM(str(path), dtype="float32", block_size=4)
    assert llm.engine.model_config.architecture == "Gemma4ForConditionalGeneration"
    assert (llm.engine.model_config.vision is not None) == vision
    for out in llm.generate(PROMPTS[:3], GREEDY):
        expected = hf_greedy(path, out.prompt_token_ids, 12)
        assert out.outputs[0].token_ids == expected == hf_greedy(tiny_model("gemma4"), out.prompt_token_ids, 12)
    if not vision:
        from PIL import Image

        with pytest.raises(ValueError, match="takes no images"):
            llm.generate({"prompt": "Describe <|image|>", "multi_modal_data": {"image": Image.new("RGB", (8, 8))}},
                         GREEDY)


def test_adapters_run_every_row_through_the_sharing_layers(tiny_model, tmp_path) -> None:
    """LoRA masks adapters row by row, so steps with an adapter keep every row past the first sharing
    layer: serving an adapter on Gemma 4 equals serving its weights merged (the sharing layers' MLPs
    here as wide as the others', so one adapter fits every layer)."""
    from pagoda.engine.fixtures import make_tiny_lora
    from pagoda.engine.lora import LoRARequest
    from tests.engine.test_lora import assert_same, merge, run

    base = tiny_model("gemma4", use_double_wide_mlp=False)
    adapter = make_tiny_lora(base, tmp_path / "adapter", rank=4, targets=("gate_proj", "up_proj", "down_proj"), seed=1)
    merged = merge(base, adapter, tmp_path / "merged")
    llm = LLM(str(base), dtype="float32", block_size=4, enable_lora=True, max_loras=1, max_lora_rank=4)
    assert_same(run(llm, LoRARequest("a", str(adapter))), run(LLM(str(merged), dtype="float32", block_size=4), None))
