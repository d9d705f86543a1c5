"""Random-weight InternVL, Mistral 3 and Gemma 4 checkpoints for tests, written as transformers writes them,
with a tokenizer and the image processor of each.

InternVL: the qwen2 fixture's language model; the InternViT tower is two layers over 56-pixel tiles
in patches of 7 (an 8 x 8 grid, pixel-shuffled to 16 features per tile); an image is cut into up to
4 tiles by its aspect ratio, plus a thumbnail when it is cut.

Gemma 4: the gemma4 fixture's language model (the same weights) beside one-layer vision and audio
towers (the engine skips the audio one).

Mistral 3: the mistral fixture's language model; a two-layer Pixtral tower over patches of 4
pixels merged 2 x 2, images fitted within 64 pixels in multiples of 8 (a row of features per 8
pixels of height, one feature per 8 of width).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import torch

from pagoda.engine.fixtures import (TOKENIZER_VOCAB_SIZE, _save_image_model, _write_json, _write_tokenizer,
                                    build_tiny_model, tiny_config)

# The ids after the trained vocabulary, in this order: the placeholder (one per feature), then <img> and </img>.
INTERNVL_TOKENS = ("<IMG_CONTEXT>", "<img>", "</img>")
INTERNVL_IMAGE_TOKEN_ID = TOKENIZER_VOCAB_SIZE
TILE, TOKENS_PER_TILE = 56, 16


def make_tiny_internvl(out_dir: str | pathlib.Path, seed: int = 0) -> pathlib.Path:
    """A random-weight InternVLForConditionalGeneration checkpoint (as OpenGVLab/InternVL3-1B-hf ships)."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    out_dir = pathlib.Path(out_dir)
    text = tiny_config("qwen2")
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=TILE,
                  patch_size=7, attention_bias=True, use_mean_pooling=True)
    config = InternVLConfig(text_config=text.to_dict(), vision_config=vision, image_token_id=INTERNVL_IMAGE_TOKEN_ID,
                            downsample_ratio=0.5, projector_hidden_act="gelu", vision_feature_layer=-1,
                            vision_feature_select_strategy="default")
    config.architectures = ["InternVLForConditionalGeneration"]
    save_random_image_model(InternVLForConditionalGeneration, config, seed, out_dir)
    _write_tokenizer(out_dir, "qwen2", text.max_position_embeddings, extra_special=INTERNVL_TOKENS,
                     image_placeholder=INTERNVL_TOKENS[0])
    _write_json(out_dir / "preprocessor_config.json", {
        "image_processor_type": "GotOcr2ImageProcessor", "crop_to_patches": True, "min_patches": 1, "max_patches": 4,
        "size": {"height": TILE, "width": TILE}, "do_resize": True, "resample": 3, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225], "do_convert_rgb": True})
    return out_dir


# The ids after the trained vocabulary, in this order: the placeholder (one per feature), the row break, the end.
MISTRAL3_TOKENS = ("[IMG]", "[IMG_BREAK]", "[IMG_END]")
MISTRAL3_IMAGE_TOKEN_ID = TOKENIZER_VOCAB_SIZE


def make_tiny_mistral3(out_dir: str | pathlib.Path, seed: int = 0) -> pathlib.Path:
    """A random-weight Mistral3ForConditionalGeneration checkpoint (as Mistral-Small-3.1-24B-Instruct ships)."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    out_dir = pathlib.Path(out_dir)
    text = tiny_config("mistral")
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=4,
                  image_size=64, hidden_act="silu")
    config = Mistral3Config(text_config=text.to_dict(), vision_config=vision, image_token_index=MISTRAL3_IMAGE_TOKEN_ID,
                            spatial_merge_size=2, projector_hidden_act="gelu", multimodal_projector_bias=False,
                            vision_feature_layer=-1)
    config.architectures = ["Mistral3ForConditionalGeneration"]
    save_random_image_model(Mistral3ForConditionalGeneration, config, seed, out_dir)
    _write_tokenizer(out_dir, "mistral", text.max_position_embeddings, extra_special=MISTRAL3_TOKENS,
                     image_placeholder=MISTRAL3_TOKENS[0])
    _write_json(out_dir / "preprocessor_config.json", {
        "image_processor_type": "PixtralImageProcessor", "patch_size": {"height": 4, "width": 4},
        "size": {"longest_edge": 64}, "do_resize": True, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "do_convert_rgb": True})
    return out_dir


# Gemma 4's image tokens, with the ids after the trained vocabulary in this order: the soft token (which a
# prompt also writes, once per image), the begin and the end of an image.
GEMMA4_IMAGE_TOKENS = ("<|image|>", "<|image>", "<image|>")


def make_tiny_gemma4_multimodal(out_dir: str | pathlib.Path, seed: int = 0, *, vision: bool = True) -> pathlib.Path:
    """A random-weight Gemma4ForConditionalGeneration checkpoint (as google/gemma-4-E2B-it ships, towers
    shrunk): its language model is `build_tiny_model("gemma4", seed=seed)`'s, so both read text alike;
    a one-layer vision tower over patches of 4 pixels pooled 2 x 2, at most 70 features per image (its
    processor's smallest budget), its projections clamped to bounds that bite, and a one-layer audio tower (skipped by the engine). `vision` off: no
    vision tower (served as text)."""
    from transformers import Gemma4AudioConfig, Gemma4Config, Gemma4ForConditionalGeneration, Gemma4VisionConfig

    out_dir = pathlib.Path(out_dir)
    text = build_tiny_model("gemma4", seed=seed)
    tower = Gemma4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               num_key_value_heads=1, head_dim=16, patch_size=4, position_embedding_size=160,
                               pooling_kernel_size=2, standardize=True, use_clipped_linears=True) if vision else None
    audio = Gemma4AudioConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                              subsampling_conv_channels=[8, 4], output_proj_dims=32)
    ids = dict(zip(("image_token_id", "boi_token_id", "eoi_token_id", "video_token_id", "audio_token_id",
                    "boa_token_id", "eoa_token_index"), range(TOKENIZER_VOCAB_SIZE, TOKENIZER_VOCAB_SIZE + 7)))
    # Untied, as the text fixture (the hub's are tied).
    config = Gemma4Config(text_config={**text.config.to_dict(), "use_bidirectional_attention": "vision"},
                          vision_config=tower, audio_config=audio, tie_word_embeddings=False, **ids)
    config.architectures = ["Gemma4ForConditionalGeneration"]
    torch.manual_seed(seed)
    model = Gemma4ForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.model.language_model.load_state_dict(text.model.state_dict())
        model.lm_head.weight.copy_(text.lm_head.weight)
        for name, param in model.named_parameters():  # the image side large enough that images move the logits
            if name.startswith(("model.vision_tower.", "model.embed_vision.")):
                param.uniform_(0.5, 1.5) if "norm" in name else param.normal_(0.0, 0.3)
        for name, buffer in model.named_buffers():
            if name.endswith("std_scale"):
                buffer.uniform_(0.5, 1.5)
            elif name.endswith("std_bias"):
                buffer.normal_(0.0, 0.3)
            elif name.startswith("model.vision_tower.") and name.endswith(("_min", "_max")):
                # Clipping bounds that bite: inputs within +-1.5, outputs within +-2 (the checkpoint's own).
                buffer.fill_((1.5 if name.endswith(("input_min", "input_max")) else 2.0)
                             * (-1 if name.endswith("_min") else 1))
    _save_image_model(model, out_dir)
    _write_tokenizer(out_dir, "gemma4", text.config.max_position_embeddings, extra_special=GEMMA4_IMAGE_TOKENS,
                     image_placeholder=GEMMA4_IMAGE_TOKENS[0])
    _write_json(out_dir / "preprocessor_config.json", {
        "image_processor_type": "Gemma4ImageProcessor", "patch_size": 4, "max_soft_tokens": 70,
        "pooling_kernel_size": 2, "do_resize": True, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": False, "image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0], "do_convert_rgb": True})
    return out_dir


def save_random_image_model(model_class: Any, config: Any, seed: int, out_dir: pathlib.Path,
                            image_side: tuple[str, ...] = ("vision_tower", "projector"),
                            layout: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None) -> None:
    """Builds a multimodal fixture from `seed`, randomizes its parameters (biases small, norms near one,
    those of the `image_side` modules large enough that images move the logits) and saves it
    (`layout`: see _save_image_model)."""
    torch.manual_seed(seed)
    model = model_class(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.15)
            elif "norm" in name or "ln_q" in name:
                param.uniform_(0.5, 1.5)
            elif any(part in name for part in image_side):
                param.normal_(0.0, 0.3)
    _save_image_model(model, out_dir, layout)
