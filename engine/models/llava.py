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

_ACTIVATIONS = {"quick_gelu": lambda x: x * torch.sigmoid(1.702 * x), "gelu": nn.functional.gelu,
                "gelu_pytorch_tanh": lambda x: nn.functional.gelu(x, approximate="tanh")}
# Language models a LLaVA checkpoint may wrap: their text config's model_type -> q/k/v biases.
_LANGUAGE_MODELS = {"llama": False, "mistral": False, "qwen2": True}


def _activation(name: str) -> Any:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"activation {name!r} is not supported (supported: {', '.join(_ACTIVATIONS)})") from None


class _ClipEmbeddings(nn.Module):
    def __init__(self, v: VisionConfig) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.empty(v.hidden_size), requires_grad=False)
        self.patch_embedding = nn.Conv2d(3, v.hidden_size, v.patch_size, v.patch_size, bias=False)
        self.position_embedding = nn.Embedding((v.image_size // v.patch_size) ** 2 + 1, v.hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixels).flatten(2).transpose(1, 2)  # [images, patches, hidden]
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class _ClipAttention(nn.Module):
    """Bidirectional multi-head attention over one image's tokens."""

    def __init__(self, v: VisionConfig) -> None:
        super().__init__()
        self.num_heads = v.num_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(v.hidden_size, v.hidden_size)
                                                                 for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (proj(x).view(b, t, self.num_heads, -1).transpose(1, 2) for proj in (self.q_proj, self.k_proj,
                                                                                         self.v_proj))
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class _ClipLayer(nn.Module):
    def __init__(self, v: VisionConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(v.hidden_size, eps=v.layer_norm_eps)
        self.self_attn = _ClipAttention(v)
        self.layer_norm2 = nn.LayerNorm(v.hidden_size, eps=v.layer_norm_eps)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(v.hidden_size, v.intermediate_size)
        self.mlp.fc2 = nn.Linear(v.intermediate_size, v.hidden_size)
        self.act = _activation(v.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp.fc2(self.act(self.mlp.fc1(self.layer_norm2(x))))


class ClipVisionTower(nn.Module):
    """CLIP's vision transformer up to the layer whose hidden states LLaVA uses; the layers past it
    and the final norm are loaded (they are in the checkpoint) but never run."""

    def __init__(self, v: VisionConfig) -> None:
        super().__init__()
        self.config = v
        self.embeddings = _ClipEmbeddings(v)
        self.pre_layrnorm = nn.LayerNorm(v.hidden_size, eps=v.layer_norm_eps)  # CLIP's spelling
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(_ClipLayer(v) for _ in range(v.num_layers))
        self.post_layernorm = nn.LayerNorm(v.hidden_size, eps=v.layer_norm_eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """[images, 3, H, W] -> the feature layer's hidden states [images, tokens_per_image, hidden]."""
        x = self.pre_layrnorm(self.embeddings(pixels))
        for layer in self.encoder.layers[: self.config.layers_run]:
            x = layer(x)
        return x[:, 1:] if self.config.select_strategy == "default" else x


class LlavaProjector(nn.Module):
    def __init__(self, v: VisionConfig, text_hidden: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(v.hidden_size, text_hidden, bias=v.projector_bias)
        self.linear_2 = nn.Linear(text_hidden, text_hidden, bias=v.projector_bias)
        self.act = _activation(v.projector_act)

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

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """[images, 3, H, W] -> their features in the language model's space, [images, tokens_per_image, hidden]."""
        return self.multi_modal_projector(self.vision_tower(pixels.to(self.multi_modal_projector.linear_1.weight.dtype)))

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        for theirs, ours in (("language_model.model.", "model."), ("model.language_model.", "model."),
                             ("language_model.lm_head.", "lm_head."), ("model.vision_tower.", "vision_tower."),
                             ("model.multi_modal_projector.", "multi_modal_projector.")):
            if name.startswith(theirs):
                name = ours + name[len(theirs):]
                break
        if name.startswith(("vision_tower.", "multi_modal_projector.")):
            # Stored as our modules hold them (nothing fused); hub conversions keep CLIP's inner `vision_model.`.
            return name.replace("vision_tower.vision_model.", "vision_tower.", 1), None
        return super().checkpoint_target(name)
