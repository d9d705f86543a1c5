"""LLaVA (`LlavaForConditionalGeneration`: llava-hf/llava-1.5-7b-hf and 13b, BakLLaVA, LLaVA on
Mistral or Qwen2 language models): a CLIP vision tower and a two-layer projector in front of a
decoder-only language model.

An image becomes `tokens_per_image` feature vectors (one per patch; the CLS token too with the
"full" strategy), taken from the tower's hidden states after `feature_layer` layers and projected
to the language model's width. The prompt holds as many placeholder tokens (engine/multimodal.py
expands them), and the engine puts the features in their rows in place of those tokens'
embeddings; everything after that, the KV cache included, is the language model's as for text.
The tower runs once per image, on the driver rank, when a prefill chunk first reaches the image.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagoda.engine.model_config import ModelConfig, VisionConfig
from pagoda.engine.models.llama import LlamaForCausalLM
from pagoda.engine.models.vision import ClipVisionTower, activation, multimodal_checkpoint_name

# Language models a LLaVA checkpoint may wrap: their text config's model_type -> q/k/v biases.
_LANGUAGE_MODELS = {"llama": False, "mistral": False, "qwen2": True}


class LlavaProjector(nn.Module):
    def __init__(self, v: VisionConfig, text_hidden: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(v.hidden_size, text_hidden, bias=v.projector_bias)
        self.linear_2 = nn.Linear(text_hidden, text_hidden, bias=v.projector_bias)
        self.act = activation(v.projector_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class LlavaForConditionalGeneration(LlamaForCausalLM):
    """The language model (Llama's structure; q/k/v biases when it is a Qwen2) with the vision tower and
    projector beside it, under both checkpoint namings (`language_model.model.*` of the original
    conversions, `model.language_model.*` of transformers 5)."""

    def __init__(self, cfg: ModelConfig) -> None:
        model_type = cfg.hf_config.get("model_type")
        if model_type not in _LANGUAGE_MODELS or cfg.vision is None:
            raise ValueError(f"LLaVA over a {model_type!r} language model is not supported "
                             f"(supported: {', '.join(_LANGUAGE_MODELS)})")
        super().__init__(cfg)
        self.vision_tower = ClipVisionTower(cfg.vision)
        self.multi_modal_projector = LlavaProjector(cfg.vision, cfg.hidden_size)

    @property
    def qkv_bias(self) -> bool:  # type: ignore[override]
        return _LANGUAGE_MODELS[self.config.hf_config["model_type"]]

    def encode_images(self, pixels: torch.Tensor, grids: torch.Tensor | None) -> torch.Tensor:
        """[images, 3, H, W] -> their features in the language model's space, [images, tokens_per_image, hidden]
        (images of one size: no grids)."""
        return self.multi_modal_projector(self.vision_tower(pixels.to(self.multi_modal_projector.linear_1.weight.dtype)))

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        name, image_side = multimodal_checkpoint_name(name)
        return (name, None) if image_side else super().checkpoint_target(name)
