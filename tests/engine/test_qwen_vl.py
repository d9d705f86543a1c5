"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: images at their own resolution (each image's placeholder count
from its patch grid), multimodal RoPE (three positions per prompt token, a delta after it; Qwen3-VL's
interleaved), Qwen2.5-VL's windowed tower, Qwen3-VL's resampled position table and DeepStack features. Greedy tokens equal transformers' own model on the same weights and pixels, through
chunked prefill that cuts images apart, preemption (recomputing prompts and generated tokens),
prefix caching and tensor parallelism."""

from __future__ import annotations

import pathlib

import pytest
import torch

from pagoda.engine.layers.rotary import RotaryEmbedding
from pagoda.engine.llm import LLM
from pagoda.engine.model_config import RopeConfig, load_model_config
from pagoda.engine.multimodal import mrope_positions
from pagoda.engine.qwen_vl_fixtures import QWEN_VL_IMAGE_TOKEN_ID, QWEN_VL_PLACEHOLDER, VERSIONS, make_tiny_qwen_vl
from pagoda.engine.sampling_params import SamplingParams
from tests.engine.test_image_prompts import MAX_TOKENS, _hf, hf_greedy, picture

GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, pathlib.Path]:
    return {v: make_tiny_qwen_vl(tmp_path_factory.mktemp(f"qwen{v}-vl") / "model", v) for v in VERSIONS}


def prompt(images: int) -> str:
    if images == 1:
        return f"USER: {QWEN_VL_PLACEHOLDER}\nWhat is in the picture? ASSISTANT:"
    return "USER: Compare " + " with ".join([QWEN_VL_PLACEHOLDER] * images) + ", please. ASSISTANT:"


# Images of 40x50 (30 tokens), 70x30 (36) and 64x64 (64) pixels: chunks of 20 tokens cut them apart.
REQUESTS = [(1, [(0, (40, 50))]), (1, [(1, (40, 50))]), (2, [(2, (70, 30)), (3, (64, 64))]), (1, [(0, (40, 50))])]
REGIMES = {
    "default": {},
    "chunked": {"max_num_batched_tokens": 20, "block_size": 4, "max_num_seqs": 3},
    "preemption": {"num_kv_blocks": 40, "block_size": 4, "max_model_len": 160, "max_num_batched_tokens": 20},
}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("regime", REGIMES)
def test_greedy_matches_transformers(models: dict[str, pathlib.Path], version: str, regime: str) -> None:
    path = models[version]
    llm = LLM(str(path), dtype="float32", **REGIMES[regime])
    requests = [(prompt(count), [picture(seed, size) for seed, size in specs]) for count, specs in REQUESTS]
    outputs = llm.generate([{"prompt": text, "multi_modal_data": {"image": images}} for text, images in requests],
                           GREEDY)
    for out, (_, images) in zip(outputs, requests):
        expected_tokens = sum(round(image.width / 8) * round(image.height / 8) for image in images)
        assert out.prompt_token_ids.count(QWEN_VL_IMAGE_TOKEN_ID) == expected_tokens, "one token per 8x8 pixels"
        assert list(out.outputs[0].token_ids) == hf_greedy(path, out.prompt_token_ids, images), regime
    assert outputs[0].outputs[0].token_ids != outputs[1].outputs[0].token_ids, "the image changes the answer"
    if regime == "preemption":
        assert llm.engine.scheduler.num_preemptions > 0
    assert llm.engine.block_manager.num_free_blocks == llm.engine.block_manager.num_usable


def test_positions_match_transformers_rope_index(models: dict[str, pathlib.Path]) -> None:
    """Text, an image, text, a wider image, text: the same (t, h, w) positions and delta as transformers'
    get_rope_index."""
    model, _ = _hf(models["2"])
    grids = torch.tensor([[1, 6, 4], [1, 4, 10]])  # 3 x 2 and 2 x 5 merged blocks
    tokens = [5] * 3 + [QWEN_VL_IMAGE_TOKEN_ID] * 6 + [5] * 4 + [QWEN_VL_IMAGE_TOKEN_ID] * 10 + [5] * 2
    ids = torch.tensor([tokens])
    expected, delta = model.model.get_rope_index(ids, (ids == QWEN_VL_IMAGE_TOKEN_ID).int(), image_grid_thw=grids)
    positions, ours = mrope_positions(len(tokens), [3, 13], grids, 2)
    assert torch.equal(positions, expected[:, 0]) and ours == int(delta)
    assert ours < 0, "images take fewer positions than tokens"


@pytest.mark.parametrize("interleaved", [False, True])
def test_three_equal_positions_are_plain_rope(interleaved: bool) -> None:
    """Text and every decode pass one position per token: the same rotation as three equal ones."""
    rope = RopeConfig(theta=10000.0, scaling={"mrope_section": [2, 3, 3], "mrope_interleaved": interleaved})
    rotary = RotaryEmbedding(16, 64, rope)
    q, k = torch.randn(5, 4, 16), torch.randn(5, 2, 16)
    positions = torch.tensor([0, 3, 7, 8, 30])
    plain = rotary(positions, q, k)
    three = rotary(positions.expand(3, -1), q, k)
    mixed = rotary(torch.stack([positions, positions + 1, positions]), q, k)
    assert all(torch.equal(a, b) for a, b in zip(plain, three))
    assert not torch.allclose(plain[0], mixed[0])


def test_config_reads_every_tower(models: dict[str, pathlib.Path]) -> None:
    two, two_five, three, three_moe, three_five, three_five_moe = (load_model_config(models[v]) for v in VERSIONS)
    assert three_moe.vision.tower == "qwen3_vl" and three_moe.moe.num_experts == 8 and three.moe is None
    assert (two.vision.tower, two_five.vision.tower, three.vision.tower) == ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
    assert two.rope.scaling["mrope_section"] == [2, 3, 3] and two.vision.mrope
    assert two_five.vision.window_size == 16 and two_five.vision.full_attention_layers == (1,)
    assert two.vision.placeholder_id == two.vision.image_token_id == QWEN_VL_IMAGE_TOKEN_ID
    assert three.rope.scaling["mrope_interleaved"] and three.rope.scaling["mrope_section"] == [6, 5, 5]
    assert three.vision.deepstack_layers == (0,) and three.vision.feature_width(64) == 128
    assert three.vision.position_embeddings == 16 and two.vision.feature_width(64) == 64
    # Qwen3.5: Qwen3-VL's tower without DeepStack, rotary over a quarter of each 32-wide head (4 frequencies).
    for config in (three_five, three_five_moe):
        assert config.vision.tower == "qwen3_vl" and config.vision.deepstack_layers == ()
        assert config.rope.partial_rotary_factor == 0.25 and config.rope.scaling["mrope_section"] == [2, 1, 1]
    assert three_five_moe.moe.num_experts == 8 and three_five.moe is None


def test_prefix_cache_and_prompt_forms(models: dict[str, pathlib.Path]) -> None:
    """The same image hits the cache through it (its positions and the text's after it are the same);
    another image of the same size stops the hit where it begins; token ids with the runs already
    expanded give the same request."""
    path = models["2.5"]
    llm = LLM(str(path), dtype="float32", block_size=4)
    text = prompt(1)
    first = llm.generate({"prompt": text, "multi_modal_data": {"image": picture(5)}}, GREEDY)[0]
    image_start = first.prompt_token_ids.index(QWEN_VL_IMAGE_TOKEN_ID)
    same = llm.generate({"prompt": text, "multi_modal_data": {"image": picture(5)}}, GREEDY)[0]
    other = llm.generate({"prompt": text, "multi_modal_data": {"image": picture(6)}}, GREEDY)[0]
    expanded = llm.generate({"prompt_token_ids": first.prompt_token_ids, "multi_modal_data": {"image": picture(5)}},
                            GREEDY)[0]
    assert same.num_cached_tokens > image_start + 30
    assert other.num_cached_tokens <= image_start
    assert same.outputs[0].token_ids == first.outputs[0].token_ids == expanded.outputs[0].token_ids
    assert expanded.prompt_token_ids == first.prompt_token_ids
    assert list(other.outputs[0].token_ids) == hf_greedy(path, other.prompt_token_ids, [picture(6)])


def test_placeholder_count_must_match(models: dict[str, pathlib.Path]) -> None:
    llm = LLM(str(models["2"]), dtype="float32")
    with pytest.raises(ValueError, match="2 image placeholder tokens for 1"):
        llm.generate({"prompt": prompt(2), "multi_modal_data": {"image": picture(0)}}, GREEDY)
    assert not llm.engine.has_unfinished_requests()


@pytest.mark.parametrize("version", VERSIONS)
def test_tensor_parallel_matches_transformers(models: dict[str, pathlib.Path], version: str) -> None:
    """The three positions per token reach the workers with the packed step, the features beside them."""
    path = models[version]
    llm = LLM(str(path), dtype="float32", tensor_parallel_size=2, max_num_batched_tokens=20, block_size=4)
    try:
        requests = [(prompt(1), [picture(0)]), (prompt(2), [picture(2, (70, 30)), picture(3, (64, 64))])]
        outputs = llm.generate([{"prompt": t, "multi_modal_data": {"image": i}} for t, i in requests], GREEDY)
    finally:
        llm.engine.shutdown()
    for out, (_, images) in zip(outputs, requests):
        assert list(out.outputs[0].token_ids) == hf_greedy(path, out.prompt_token_ids, images)


def test_processor_kwargs_bound_an_images_tokens(models: dict[str, pathlib.Path]) -> None:
    """vLLM's mm_processor_kwargs reach the image processor: max_pixels 1024 shrinks a 64x64 image
    (64 tokens) to 32x32 (16)."""
    llm = LLM(str(models["2"]), dtype="float32", mm_processor_kwargs={"max_pixels": 1024})
    out = llm.generate({"prompt": prompt(1), "multi_modal_data": {"image": picture(3, (64, 64))}}, GREEDY)[0]
    assert out.prompt_token_ids.count(QWEN_VL_IMAGE_TOKEN_ID) == 16


def test_hub_style_flat_config(models: dict[str, pathlib.Path], tmp_path: pathlib.Path) -> None:
    """Qwen2-VL's and Qwen2.5-VL's hub configs keep the language model's settings at the top level with
    rope_scaling {"type": "mrope"}: served the same as transformers 5's nested text_config."""
    import json
    import shutil

    path = shutil.copytree(models["2.5"], tmp_path / "flat")
    nested = json.loads((path / "config.json").read_text())
    text = nested.pop("text_config")
    rope = text.pop("rope_parameters")
    flat = {**text, **nested, "rope_theta": rope["rope_theta"],
            "rope_scaling": {"type": "mrope", "mrope_section": rope["mrope_section"]}}
    (path / "config.json").write_text(json.dumps(flat))
    request = {"prompt": prompt(1), "multi_modal_data": {"image": picture(7)}}
    outputs = [LLM(str(p), dtype="float32").generate(request, GREEDY)[0] for p in (models["2.5"], path)]
    assert load_model_config(path).rope.scaling["mrope_section"] == rope["mrope_section"]
    assert outputs[0].outputs[0].token_ids == outputs[1].outputs[0].token_ids


def test_per_request_processor_kwargs(models: dict[str, pathlib.Path]) -> None:
    """vLLM's per-request mm_processor_kwargs: max_pixels 1024 shrinks one request's 64x64 image to 16
    tokens while another keeps 64 in the same engine, the same tokens as an engine set up that way;
    the prefix cache tells the two apart though the picture is the same."""
    path = models["2"]
    llm = LLM(str(path), dtype="float32", block_size=4)
    image = picture(3, (64, 64))
    request = {"prompt": prompt(1), "multi_modal_data": {"image": image}}
    full = llm.generate(request, GREEDY)[0]
    small = llm.generate({**request, "mm_processor_kwargs": {"max_pixels": 1024}}, GREEDY)[0]
    assert (full.prompt_token_ids.count(QWEN_VL_IMAGE_TOKEN_ID), small.prompt_token_ids.count(QWEN_VL_IMAGE_TOKEN_ID)) \
        == (64, 16)
    assert small.num_cached_tokens <= small.prompt_token_ids.index(QWEN_VL_IMAGE_TOKEN_ID)
    engine_wide = LLM(str(path), dtype="float32", mm_processor_kwargs={"max_pixels": 1024}).generate(request, GREEDY)[0]
    assert engine_wide.outputs[0].token_ids == small.outputs[0].token_ids
    with pytest.raises(ValueError, match="mm_processor_kwargs must be an object"):
        llm.generate({**request, "mm_processor_kwargs": [1]}, GREEDY)
    for hostile in ({"min_pixels": 10**8}, {"size": {"shortest_edge": 10**8}}):  # gigabytes of resized pixels
        with pytest.raises(ValueError, match="pixels allowed"):
            llm.generate({**request, "mm_processor_kwargs": hostile}, GREEDY)
    with pytest.raises(ValueError, match="cannot preprocess the image"):
        llm.generate({**request, "mm_processor_kwargs": {"bogus": 1}}, GREEDY)
    assert not llm.engine.has_unfinished_requests()
