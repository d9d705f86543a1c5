"""Random-weight Qwen2-VL and Qwen2.5-VL checkpoints for tests and benchmarks, written as transformers
writes them, with a tokenizer and an image processor of their own.

The language model is the qwen2 fixture's with multimodal RoPE over its 8 frequencies
(mrope_section [2, 3, 3]); the vision tower is two layers over patches of 4 pixels merged 2 x 2,
so an image resized to h x w pixels (multiples of 8) becomes h * w / 64 placeholder tokens.
Qwen2.5-VL's tower attends within windows of 16 pixels (2 x 2 merged blocks) in its first layer and
over the whole image in its second. Qwen3-VL's language model is the qwen3 fixture's (q/k norms),
its tower resamples a 4 x 4 learned position table to each image and feeds DeepStack features
from its first layer to the language model's first.
"""

from __future__ import annotations

import pathlib
from typing import Any

import torch

from pagoda.engine.fixtures import TOKENIZER_VOCAB_SIZE, _write_json, _write_tokenizer, tiny_config
from pagoda.engine.vision_fixtures import save_random_image_model

# The ids after the trained vocabulary, in this order; a chat template writes the three in a row.
QWEN_VL_TOKENS = ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>")
QWEN_VL_IMAGE_TOKEN_ID = TOKENIZER_VOCAB_SIZE
QWEN_VL_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
PATCH, MERGE = 4, 2
VERSIONS = ("2", "2.5", "3", "3-moe", "3.5", "3.5-moe")


def make_tiny_qwen_vl(out_dir: str | pathlib.Path, version: str = "2", seed: int = 0, *,
                      text: dict[str, Any] | None = None, vision: dict[str, Any] | None = None) -> pathlib.Path:
    """A random-weight Qwen2VLForConditionalGeneration (`version` "2"), Qwen2_5_VLForConditionalGeneration
    ("2.5"), Qwen3VLForConditionalGeneration ("3") or Qwen3VLMoeForConditionalGeneration ("3-moe": the
    qwen3_moe fixture's language model, expert stacks stored transposed as on the hub) checkpoint with its tokenizer and image processor
    (images resized to between 16 x 16 and 64 x 64 pixels' worth, sides multiples of 8). `text` and
    `vision` override the two configs (a benchmark's larger shapes); mrope_section splits the head's
    frequencies as the real checkpoints split 64 ([16, 24, 24] in runs; Qwen3-VL's [24, 20, 20]
    interleaved)."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                              Qwen2VLForConditionalGeneration, Qwen3_5Config, Qwen3_5ForConditionalGeneration,
                              Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration, Qwen3VLConfig,
                              Qwen3VLForConditionalGeneration, Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration)

    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, not {version!r}")
    out_dir = pathlib.Path(out_dir)
    qwen3 = version.startswith("3")
    text = tiny_config({"2": "qwen2", "2.5": "qwen2", "3": "qwen3", "3-moe": "qwen3_moe", "3.5": "qwen3_5",
                        "3.5-moe": "qwen3_5_moe"}[version], **(text or {})).to_dict()
    partial = float(text["rope_parameters"].get("partial_rotary_factor", 1.0))
    frequencies = int((text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]) * partial) // 2
    spatial = frequencies * 20 // 64 if qwen3 else (frequencies - frequencies // 4) // 2
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_interleaved": qwen3,
                               "mrope_section": [frequencies - 2 * spatial, spatial, spatial],
                               "partial_rotary_factor": partial}
    base = dict(depth=2, num_heads=2, patch_size=PATCH, spatial_merge_size=MERGE, temporal_patch_size=2)
    ids = dict(image_token_id=QWEN_VL_IMAGE_TOKEN_ID, vision_start_token_id=TOKENIZER_VOCAB_SIZE + 1,
               vision_end_token_id=TOKENIZER_VOCAB_SIZE + 2)
    if version == "2":
        tower = {**base, "embed_dim": 32, "mlp_ratio": 2, "hidden_size": text["hidden_size"], "hidden_act": "quick_gelu",
                 **(vision or {})}
        config, model_class = Qwen2VLConfig(text_config=text, vision_config=tower, **ids), Qwen2VLForConditionalGeneration
        config.architectures = ["Qwen2VLForConditionalGeneration"]
    elif version == "2.5":
        tower = {**base, "hidden_size": 32, "intermediate_size": 48, "hidden_act": "silu", "window_size": 2 * MERGE * PATCH,
                 "fullatt_block_indexes": [1], "out_hidden_size": text["hidden_size"], **(vision or {})}
        config = Qwen2_5_VLConfig(text_config=text, vision_config=tower, **ids)
        model_class = Qwen2_5_VLForConditionalGeneration
        config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    else:  # a 4 x 4 learned position table; DeepStack features from the first layer for the first text layer
        tower = {**base, "hidden_size": 32, "intermediate_size": 48, "hidden_act": "gelu_pytorch_tanh",
                 "out_hidden_size": text["hidden_size"], "num_position_embeddings": 16,
                 "deepstack_visual_indexes": [] if version.startswith("3.5") else [0], **(vision or {})}
        config_class, model_class = {
            "3": (Qwen3VLConfig, Qwen3VLForConditionalGeneration),
            "3-moe": (Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration),
            "3.5": (Qwen3_5Config, Qwen3_5ForConditionalGeneration),
            "3.5-moe": (Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration)}[version]
        config = config_class(text_config=text, vision_config=tower, **ids)
        config.architectures = [model_class.__name__]
    # The hub's Qwen3-VL-MoE checkpoints store the expert stacks [experts, in, out].
    save_random_image_model(model_class, config, seed, out_dir, image_side=("visual",),
                            layout=_transposed_expert_stacks if version == "3-moe" else None)
    _write_tokenizer(out_dir, "qwen2", text["max_position_embeddings"], extra_special=QWEN_VL_TOKENS,
                     image_placeholder=QWEN_VL_PLACEHOLDER)
    side = MERGE * PATCH
    _write_json(out_dir / "preprocessor_config.json", {
        "image_processor_type": "Qwen2VLImageProcessor", "patch_size": PATCH, "temporal_patch_size": 2,
        "merge_size": MERGE, "size": {"shortest_edge": 4 * side * side, "longest_edge": 64 * side * side},
        "do_resize": True, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": True})
    return out_dir


def _transposed_expert_stacks(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors with the stacked experts' transposed, [experts, in, out]."""
    stacked = (".experts.gate_up_proj", ".experts.down_proj")
    return {name: tensor.transpose(1, 2).contiguous() if name.endswith(stacked) else tensor.contiguous()
            for name, tensor in tensors.items()}
