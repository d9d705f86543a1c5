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

class LlavaProjector(nn.Module):
    def __init__(self, v: VisionConfig, text_hidden: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(v.hidden_size, text_hidden, bias=v.projector_bias)
        self.linear_2 = nn.Linear(text_hidden, text_hidden, bias=v.projector_bias)
        self.act = activation(v.projector_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class TowerBesideLanguageModel(LlamaForCausalLM):
    """A Llama-structured language model with a vision tower and projector beside it (LLaVA, InternVL,
    Mistral 3), under both checkpoint namings (`language_model.model.*` of the original conversions,
    `model.language_model.*` of transformers 5). `language_models` maps the text config's model_type
    to its (q/k/v biases, per-head q/k norms); subclasses build their tower and projector."""

    family = ""
    language_models: dict[str, tuple[bool, bool]] = {}

    def __init__(self, cfg: ModelConfig) -> None:
        model_type = cfg.hf_config.get("model_type")
        if model_type not in self.language_models or cfg.vision is None:
            raise ValueError(f"{self.family} over a {model_type!r} language model is not supported "
                             f"(supported: {', '.join(self.language_models)})")
        super().__init__(cfg)
        self.vision_tower, self.multi_modal_projector = self.build_image_side(cfg)

    def build_image_side(self, cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
        """(the vision tower, the projector)."""
        raise NotImplementedError

    @property
    def qkv_bias(self) -> bool:  # type: ignore[override]
        return self.language_models[self.config.hf_config["model_type"]][0]

    @property
    def qk_norm(self) -> bool:  # type: ignore[override]
        return self.language_models[self.config.hf_config["model_type"]][1]

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        name, image_side = multimodal_checkpoint_name(name)
        return (name, None) if image_side else super().checkpoint_target(name)


class LlavaForConditionalGeneration(TowerBesideLanguageModel):
    """LLaVA over Llama, Mistral or Qwen2 (q/k/v biases)."""

    family = "LLaVA"
    language_models = {"llama": (False, False), "mistral": (False, False), "qwen2": (True, False)}

    def build_image_side(self, cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
        return ClipVisionTower(cfg.vision), LlavaProjector(cfg.vision, cfg.hidden_size)

    def encode_images(self, pixels: torch.Tensor, grids: torch.Tensor | None) -> torch.Tensor:
        """[images, 3, H, W] -> their features in the language model's space, [images, tokens_per_image, hidden]
        (images of one size: no grids)."""
        return self.multi_modal_projector(self.vision_tower(pixels.to(self.multi_modal_projector.linear_1.weight.dtype)))
