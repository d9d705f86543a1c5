"""Images in prompts (LLaVA, Gemma 3, InternVL, Mistral 3, Gemma 4): greedy tokens equal transformers' own model on the same
weights and pixels, through chunked prefill (which cuts a causal image apart and never a Gemma 3
image, whose tokens attend to one another both ways), prefix caching (which must tell images apart
behind identical placeholder tokens), preemption and tensor parallelism; bad image inputs are
refused by name."""

from __future__ import annotations

import base64
import functools
import io
import pathlib
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForImageTextToText

from pagoda.engine.fixtures import IMAGE_TOKEN_ID, make_tiny_gemma3_multimodal, make_tiny_llava
from pagoda.engine.vision_fixtures import (GEMMA4_IMAGE_TOKENS, INTERNVL_TOKENS, make_tiny_gemma4_multimodal,
                                          make_tiny_internvl, make_tiny_mistral3)
from pagoda.engine.llm import LLM
from pagoda.engine.model_config import load_model_config
from pagoda.engine.multimodal import image_hash, load_image
from pagoda.engine.sampling_params import SamplingParams
from tests.engine.hf_reference import next_step_cache

Image = pytest.importorskip("PIL.Image", reason="pillow (the engine extra) reads images")

MAX_TOKENS = 8
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)


@dataclass(frozen=True)
class ImageModel:
    path: pathlib.Path
    placeholder: str  # what a prompt writes for an image
    image_token_id: int
    tokens_per_image: int
    bidirectional: bool

    def prompt(self, images: int = 1) -> str:
        if images == 1:
            return f"USER: {self.placeholder}\nWhat is in the picture? ASSISTANT:"
        return "USER: Compare " + " with ".join([self.placeholder] * images) + ", please. ASSISTANT:"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, ImageModel]:
    llava = make_tiny_llava(tmp_path_factory.mktemp("llava") / "model")
    gemma3 = make_tiny_gemma3_multimodal(tmp_path_factory.mktemp("gemma3") / "model")
    internvl = make_tiny_internvl(tmp_path_factory.mktemp("internvl") / "model")
    mistral3 = make_tiny_mistral3(tmp_path_factory.mktemp("mistral3") / "model")
    gemma4 = make_tiny_gemma4_multimodal(tmp_path_factory.mktemp("gemma4") / "model")
    found = {}
    for name, path, placeholder in (("llava", llava, "<image>"), ("gemma3", gemma3, "<start_of_image>"),
                                    ("internvl", internvl, INTERNVL_TOKENS[0]), ("mistral3", mistral3, "[IMG]"),
                                    ("gemma4", gemma4, GEMMA4_IMAGE_TOKENS[0])):
        v = load_model_config(path).vision
        # Mistral 3 reads a picture (40 x 50) at its size: 5 rows of 7 features, 8 pixels each; Gemma 4
        # resizes it to fill its 70-feature budget in whole pooled patches (56 x 72 pixels: 7 x 9 features).
        tokens = v.tokens_per_image or (7 * 9 if name == "gemma4" else 5 * 7)
        found[name] = ImageModel(path, placeholder, v.image_token_id, tokens, v.bidirectional)
    return found


@pytest.fixture(scope="module")
def llava(models: dict[str, ImageModel]) -> pathlib.Path:
    return models["llava"].path


PROMPT = "USER: <image>\nWhat is in the picture? ASSISTANT:"
TWO_IMAGES = "USER: Compare <image> with <image>, please. ASSISTANT:"


def picture(seed: int, size: tuple[int, int] = (40, 50)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((*size, 3)) * 255).astype("uint8"))


@functools.cache
def _hf(path: pathlib.Path) -> tuple[torch.nn.Module, object]:
    return AutoModelForImageTextToText.from_pretrained(str(path), dtype=torch.float32).eval(), \
        AutoImageProcessor.from_pretrained(str(path))


@torch.inference_mode()
def hf_greedy(path: pathlib.Path, prompt_ids: list[int], images: list[Image.Image]) -> list[int]:
    """transformers' greedy continuation of the expanded prompt with the images' pixels, never stopping at
    EOS (Gemma 3 told which tokens are image tokens, for its bidirectional image attention; Qwen-VL too,
    and each image's grid, for its multimodal RoPE positions)."""
    model, processor = _hf(path)
    ids = torch.tensor([prompt_ids])
    extra = {}
    if model.config.model_type == "mistral3":  # its processor sizes images in merged patches, as Pixtral's does
        side = model.config.vision_config.patch_size * model.config.spatial_merge_size
        processed = processor(images=images, return_tensors="pt", patch_size={"height": side, "width": side})
        extra["image_sizes"] = processed["image_sizes"]
    else:
        processed = processor(images=images, return_tensors="pt")
    if model.config.model_type == "gemma3":
        extra["token_type_ids"] = (ids == model.config.image_token_index).long()
    if model.config.model_type == "gemma4":  # each patch's place, and which tokens attend both ways
        extra.update(image_position_ids=processed["image_position_ids"],
                     mm_token_type_ids=(ids == model.config.image_token_id).int())
    if "image_grid_thw" in processed:
        extra.update(image_grid_thw=processed["image_grid_thw"],
                     mm_token_type_ids=(ids == model.config.image_token_id).int())
    out = model(input_ids=ids, pixel_values=processed["pixel_values"], use_cache=True, **extra)
    generated: list[int] = []
    for _ in range(MAX_TOKENS):
        token = int(out.logits[0, -1].argmax())
        generated.append(token)
        out = model(input_ids=torch.tensor([[token]]), **next_step_cache(out), use_cache=True)
    return generated


REGIMES = {
    "default": {},
    # Budgets of 20 tokens: prefill chunks would end inside the 16-token images (LLaVA's are cut there,
    # Gemma 3's chunk stops before the image instead).
    "chunked": {"max_num_batched_tokens": 20, "block_size": 4, "max_num_seqs": 3},
    "preemption": {"num_kv_blocks": 24, "block_size": 4, "max_model_len": 96},
}


@pytest.mark.parametrize("name", ["llava", "gemma3", "internvl", "mistral3", "gemma4"])
@pytest.mark.parametrize("regime", REGIMES)
def test_greedy_matches_transformers(models: dict[str, ImageModel], name: str, regime: str) -> None:
    model = models[name]
    options = dict(REGIMES[regime])
    if name == "gemma3" and "num_kv_blocks" in options:
        # Blocks of one layer each (sliding and full layers apart): as few as one sequence needs, and prefill
        # in chunks so that running sequences outgrow the pool (sliding layers give blocks back as they go).
        options.update(num_kv_blocks=49, max_num_batched_tokens=20)
    if name == "internvl" and "num_kv_blocks" in options:  # shorter prompts: fewer blocks, prefill in chunks
        options.update(num_kv_blocks=20, max_num_batched_tokens=20, max_model_len=80)
    if name == "mistral3" and "num_kv_blocks" in options:  # longer ones (rows and their breaks): more
        options.update(num_kv_blocks=34, max_num_batched_tokens=20, max_model_len=136)
    if name == "gemma4" and regime != "default":
        # Its 63-token images attend both ways in one step: budgets that hold one (and cut the text around
        # it); longer prompts, in three groups of one layer each (two sliding, one full): more blocks.
        options.update(max_num_batched_tokens=70)
        if "num_kv_blocks" in options:
            options.update(num_kv_blocks=90, max_model_len=176)
    llm = LLM(str(model.path), dtype="float32", **options)
    requests = [(model.prompt(), [picture(0)]), (model.prompt(), [picture(1)]),
                (model.prompt(2), [picture(2), picture(3)]), (model.prompt(), [picture(0)])]
    outputs = llm.generate([{"prompt": text, "multi_modal_data": {"image": images}} for text, images in requests],
                           GREEDY)
    for out, (_, images) in zip(outputs, requests):
        assert out.prompt_token_ids.count(model.image_token_id) == model.tokens_per_image * len(images)
        assert list(out.outputs[0].token_ids) == hf_greedy(model.path, out.prompt_token_ids, images), regime
    assert outputs[0].outputs[0].token_ids != outputs[1].outputs[0].token_ids, "the image changes the answer"
    if regime == "preemption":
        assert llm.engine.scheduler.num_preemptions > 0
    assert llm.engine.block_manager.num_free_blocks == llm.engine.block_manager.num_usable


def test_gemma3_images_attend_both_ways(models: dict[str, ImageModel]) -> None:
    """Without the bidirectional image attention transformers' Gemma 3 gives other tokens: the test above sees it."""
    model = models["gemma3"]
    llm = LLM(str(model.path), dtype="float32")
    out = llm.generate({"prompt": model.prompt(), "multi_modal_data": {"image": picture(4)}}, GREEDY)[0]
    hf, _ = _hf(model.path)
    pixels = _hf(model.path)[1](images=[picture(4)], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        causal = hf(input_ids=torch.tensor([out.prompt_token_ids]), pixel_values=pixels).logits[0, -1]
        both_ways = hf(input_ids=torch.tensor([out.prompt_token_ids]), pixel_values=pixels,
                       token_type_ids=(torch.tensor([out.prompt_token_ids]) == model.image_token_id).long()).logits[0, -1]
    assert not torch.allclose(causal, both_ways)
    text = llm.tokenizer.decode(out.prompt_token_ids)
    assert "\n\n<start_of_image>" in text and "<end_of_image>\n\n" in text, "Gemma 3's image wrapping"


def test_gemma4_images_attend_both_ways_in_sliding_layers_only(models: dict[str, ImageModel]) -> None:
    """Gemma 4's image tokens see their whole image in the sliding layers, and only what precedes them in
    the global ones: prompt logprobs equal transformers' (to fp32 rounding); seeing both ways in every
    layer, or in none, departs from them (greedy tokens alone may not show the former)."""
    model = models["gemma4"]
    hf, processor = _hf(model.path)
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
    deviations = {}
    for both_ways_in_global_layers in (False, True):
        llm = LLM(str(model.path), dtype="float32")
        for layer in llm.engine.runner.model.model.layers:
            if layer.self_attn.kind == "full_attention":
                layer.self_attn.attn.causal_only = not both_ways_in_global_layers
        out = llm.generate({"prompt": model.prompt(), "multi_modal_data": {"image": picture(0)}}, params)[0]
        ids = torch.tensor([out.prompt_token_ids])
        pixels = processor(images=[picture(0)], return_tensors="pt")
        with torch.inference_mode():
            expected = hf(input_ids=ids, pixel_values=pixels["pixel_values"],
                          image_position_ids=pixels["image_position_ids"],
                          mm_token_type_ids=(ids == model.image_token_id).int()).logits[0].float().log_softmax(-1)
        ours = [next(iter(p.values())).logprob for p in out.prompt_logprobs[1:]]
        deviations[both_ways_in_global_layers] = max(abs(a - expected[i, ids[0, i + 1]].item())
                                                     for i, a in enumerate(ours))
    assert deviations[False] < 1e-3 < 1e-2 < deviations[True]


def test_internvl_tiles_an_image_by_its_aspect(models: dict[str, ImageModel]) -> None:
    """A wide image becomes two tiles and a thumbnail (3 x 16 tokens between <img> and </img>), a square one a
    single tile: transformers' tokens, in one batch."""
    model = models["internvl"]
    llm = LLM(str(model.path), dtype="float32", max_num_batched_tokens=20, block_size=4)
    images = [picture(10, (60, 130)), picture(11, (64, 64))]
    out = llm.generate({"prompt": model.prompt(2), "multi_modal_data": {"image": images}}, GREEDY)[0]
    assert out.prompt_token_ids.count(model.image_token_id) == 16 * (3 + 1)
    text = llm.tokenizer.decode(out.prompt_token_ids)
    assert text.count("<img>") == text.count("</img>") == 2
    assert list(out.outputs[0].token_ids) == hf_greedy(model.path, out.prompt_token_ids, images)


def test_mistral3_rows_end_in_break_tokens(models: dict[str, ImageModel]) -> None:
    """Each row of a Mistral 3 image's features is followed by [IMG_BREAK], the last by [IMG_END]; those
    keep their embeddings while chunks cut the run anywhere; the run written out already is the same request."""
    model = models["mistral3"]
    llm = LLM(str(model.path), dtype="float32", max_num_batched_tokens=9, block_size=4)
    image = picture(12, (60, 130))  # fitted to 29 x 64 pixels: 4 rows of 8 features
    out = llm.generate({"prompt": model.prompt(), "multi_modal_data": {"image": image}}, GREEDY)[0]
    text = llm.tokenizer.decode(out.prompt_token_ids)
    assert text.count("[IMG_BREAK]") == 3 and text.count("[IMG_END]") == 1
    assert out.prompt_token_ids.count(model.image_token_id) == 32
    assert list(out.outputs[0].token_ids) == hf_greedy(model.path, out.prompt_token_ids, [image])
    again = llm.generate({"prompt_token_ids": out.prompt_token_ids, "multi_modal_data": {"image": image}}, GREEDY)[0]
    assert again.prompt_token_ids == out.prompt_token_ids and again.outputs[0].token_ids == out.outputs[0].token_ids


def test_a_bidirectional_image_needs_a_budget_that_holds_it(models: dict[str, ImageModel]) -> None:
    """Gemma 3's images are all alike: a budget that cannot hold one is refused at start. Gemma 4's are as
    large as each picture makes them: a request with one the budget cannot hold is refused, not left waiting."""
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        LLM(str(models["gemma3"].path), dtype="float32", max_num_batched_tokens=8)
    llm = LLM(str(models["gemma4"].path), dtype="float32", max_num_batched_tokens=32)
    with pytest.raises(ValueError, match="image of 63 tokens .* max_num_batched_tokens"):
        llm.generate({"prompt": models["gemma4"].prompt(), "multi_modal_data": {"image": picture(0)}}, GREEDY)
    assert len(llm.generate("Hello", GREEDY)[0].outputs[0].token_ids) == MAX_TOKENS  # the engine goes on


def test_prefix_cache_tells_images_apart(llava: pathlib.Path) -> None:
    """The same prompt with the same image hits the cache through the image; with another image the hit
    stops where that image begins, though the tokens are the same."""
    llm = LLM(str(llava), dtype="float32", block_size=4)
    first = llm.generate({"prompt": PROMPT, "multi_modal_data": {"image": picture(5)}}, GREEDY)[0]
    image_start = first.prompt_token_ids.index(IMAGE_TOKEN_ID)
    same = llm.generate({"prompt": PROMPT, "multi_modal_data": {"image": picture(5)}}, GREEDY)[0]
    other = llm.generate({"prompt": PROMPT, "multi_modal_data": {"image": picture(6)}}, GREEDY)[0]
    assert same.num_cached_tokens > image_start + 16
    assert other.num_cached_tokens <= image_start
    assert same.outputs[0].token_ids == first.outputs[0].token_ids
    assert list(other.outputs[0].token_ids) == hf_greedy(llava, other.prompt_token_ids, [picture(6)])


def test_prompt_forms(llava: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """Token ids with one placeholder per image or already expanded, and an image as a path, bytes or a
    data URL: the same request as text with a PIL image."""
    llm = LLM(str(llava), dtype="float32")
    image = picture(7)
    reference = llm.generate({"prompt": PROMPT, "multi_modal_data": {"image": image}}, GREEDY)[0]
    ids = llm.tokenizer.encode(PROMPT)
    path = tmp_path / "p.png"
    image.save(path)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    for prompt in ({"prompt_token_ids": ids, "multi_modal_data": {"image": str(path)}},
                   {"prompt_token_ids": reference.prompt_token_ids, "multi_modal_data": {"image": [buffer.getvalue()]}},
                   {"prompt": PROMPT, "multi_modal_data": {"image": url}}):
        out = llm.generate(prompt, GREEDY)[0]
        assert (out.prompt_token_ids, out.outputs[0].token_ids) == (reference.prompt_token_ids,
                                                                    reference.outputs[0].token_ids)
    assert image_hash(load_image(str(path))) == image_hash(image) != image_hash(picture(8))


def test_offline_chat_with_image_parts(llava: pathlib.Path) -> None:
    """llm.chat takes OpenAI's image_url parts and vLLM's image_pil parts; the template places each image."""
    llm = LLM(str(llava), dtype="float32")
    buffer = io.BytesIO()
    picture(9).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    replies = [llm.chat([{"role": "user", "content": [part, {"type": "text", "text": "What is it?"}]}], GREEDY)[0]
               for part in ({"type": "image_url", "image_url": {"url": url}}, {"type": "image_pil", "image_pil": picture(9)})]
    assert replies[0].prompt_token_ids == replies[1].prompt_token_ids
    assert replies[0].outputs[0].token_ids == replies[1].outputs[0].token_ids == \
        hf_greedy(llava, replies[0].prompt_token_ids, [picture(9)])


@pytest.mark.parametrize(("prompt", "message"), [
    ({"prompt": "no placeholder here", "multi_modal_data": {"image": "IMG"}}, "0 image placeholder tokens for 1"),
    ({"prompt": TWO_IMAGES, "multi_modal_data": {"image": "IMG"}}, "2 image placeholder tokens for 1"),
    ({"prompt": PROMPT, "multi_modal_data": {"image": b"not an image"}}, "cannot decode the image"),
    ({"prompt": PROMPT, "multi_modal_data": {"image": "data:image/png,abc"}}, "must be base64"),
    ({"prompt": PROMPT, "multi_modal_data": {"video": "IMG"}}, "multi_modal_data takes 'image'"),
    ({"prompt": PROMPT, "multi_modal_data": {"image": "/nonexistent.png"}}, "cannot read image"),
])
def test_bad_image_inputs_are_refused(llava: pathlib.Path, prompt: dict, message: str) -> None:
    llm = LLM(str(llava), dtype="float32")
    prompt = {**prompt, "multi_modal_data": {k: picture(0) if v == "IMG" else v
                                             for k, v in prompt["multi_modal_data"].items()}}
    with pytest.raises(ValueError, match=message):
        llm.generate(prompt, GREEDY)
    assert not llm.engine.has_unfinished_requests()


def test_a_text_model_refuses_images(tiny_model) -> None:
    llm = LLM(str(tiny_model("llama")), dtype="float32")
    with pytest.raises(ValueError, match="takes no images"):
        llm.generate({"prompt": "hi", "multi_modal_data": {"image": picture(0)}}, GREEDY)


@pytest.mark.parametrize("tp", [2])
@pytest.mark.parametrize("name", ["llava", "gemma3", "internvl", "mistral3", "gemma4"])
def test_tensor_parallel_matches_transformers(models: dict[str, ImageModel], name: str, tp: int) -> None:
    """The driver's vision tower runs; its features reach the workers with the step (and Gemma 3's
    per-token key limits with the packed inputs)."""
    model = models[name]
    budget = 70 if name == "gemma4" else 20  # a step holds a whole Gemma 4 image (63 tokens)
    llm = LLM(str(model.path), dtype="float32", tensor_parallel_size=tp, max_num_batched_tokens=budget, block_size=4)
    try:
        requests = [(model.prompt(), [picture(0)]), (model.prompt(2), [picture(2), picture(3)])]
        outputs = llm.generate([{"prompt": t, "multi_modal_data": {"image": i}} for t, i in requests], GREEDY)
    finally:
        llm.engine.shutdown()
    for out, (_, images) in zip(outputs, requests):
        assert list(out.outputs[0].token_ids) == hf_greedy(model.path, out.prompt_token_ids, images)
