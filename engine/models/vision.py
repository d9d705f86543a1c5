"""Vision towers that turn images into patch features: CLIP's (LLaVA) and SigLIP's (Gemma 3).

Both are plain ViTs, pre-norm layers of bidirectional attention and a GELU MLP over one image's
patches, named as transformers names them; they differ in their embeddings (CLIP adds a class
token and a norm before the layers; SigLIP's patch convolution has a bias), which layer's
states they give, and where the final norm applies. They run on whole images, outside the
paged KV cache, in the model's dtype and replicated on every rank (a few hundred million
parameters next to the language model's billions).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagoda.engine.model_config import VisionConfig

_ACTIVATIONS = {"quick_gelu": lambda x: x * torch.sigmoid(1.702 * x), "gelu": nn.functional.gelu,
                "gelu_pytorch_tanh": lambda x: nn.functional.gelu(x, approximate="tanh"), "silu": nn.functional.silu}


def rotate_patches(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary of patch vectors x [patches, heads, head_dim] by each patch's cos/sin
    [patches, head_dim] (the 2-D rotary of Qwen-VL's and Pixtral's towers), in x's dtype."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def activation(name: str) -> Any:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"activation {name!r} is not supported (supported: {', '.join(_ACTIVATIONS)})") from None


class _Attention(nn.Module):
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


class _Layer(nn.Module):
    def __init__(self, v: VisionConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(v.hidden_size, eps=v.layer_norm_eps)
        self.self_attn = _Attention(v)
        self.layer_norm2 = nn.LayerNorm(v.hidden_size, eps=v.layer_norm_eps)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(v.hidden_size, v.intermediate_size)
        self.mlp.fc2 = nn.Linear(v.intermediate_size, v.hidden_size)
        self.act = activation(v.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp.fc2(self.act(self.mlp.fc1(self.layer_norm2(x))))


class _Tower(nn.Module):
    """The layers and the final norm every tower has."""

    def __init__(self, v: VisionConfig) -> None:
        super().__init__()
        self.config = v
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(_Layer(v) for _ in range(v.num_layers))
        self.post_layernorm = nn.LayerNorm(v.hidden_size, eps=v.layer_norm_eps)
        self.num_patches = (v.image_size // v.patch_size) ** 2

    def _patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """[images, 3, H, W] -> [images, patches, hidden]."""
        return self.embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)


class ClipVisionTower(_Tower):
    """CLIP's vision transformer up to the layer whose hidden states LLaVA uses; the layers past it
    and the final norm are loaded (they are in the checkpoint) but never run."""

    def __init__(self, v: VisionConfig) -> None:
        super().__init__(v)
        self.embeddings = nn.Module()
        self.embeddings.class_embedding = nn.Parameter(torch.empty(v.hidden_size), requires_grad=False)
        self.embeddings.patch_embedding = nn.Conv2d(3, v.hidden_size, v.patch_size, v.patch_size, bias=False)
        self.embeddings.position_embedding = nn.Embedding(self.num_patches + 1, v.hidden_size)
        self.pre_layrnorm = nn.LayerNorm(v.hidden_size, eps=v.layer_norm_eps)  # CLIP's spelling

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """[images, 3, H, W] -> the feature layer's hidden states [images, tokens_per_image, hidden]."""
        patches = self._patches(pixels)
        cls = self.embeddings.class_embedding.expand(patches.shape[0], 1, -1)
        x = self.pre_layrnorm(torch.cat([cls, patches], dim=1) + self.embeddings.position_embedding.weight)
        for layer in self.encoder.layers[: self.config.layers_run]:
            x = layer(x)
        return x[:, 1:] if self.config.select_strategy == "default" else x


class SiglipVisionTower(_Tower):
    """SigLIP's vision transformer: every layer, then the final norm, one feature per patch."""

    def __init__(self, v: VisionConfig) -> None:
        super().__init__(v)
        self.embeddings = nn.Module()
        self.embeddings.patch_embedding = nn.Conv2d(3, v.hidden_size, v.patch_size, v.patch_size)
        self.embeddings.position_embedding = nn.Embedding(self.num_patches, v.hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """[images, 3, H, W] -> [images, patches, hidden]."""
        x = self._patches(pixels) + self.embeddings.position_embedding.weight
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)


# How multimodal checkpoints name the language model and the image side (original conversions:
# `language_model.model.*`; transformers 5: `model.language_model.*`, `model.vision_tower.*`), and our names.
_MULTIMODAL_NAMES = (("language_model.model.", "model."), ("model.language_model.", "model."),
                     ("language_model.", ""), ("model.vision_tower.", "vision_tower."),
                     ("model.multi_modal_projector.", "multi_modal_projector."))


def multimodal_checkpoint_name(name: str) -> tuple[str, bool]:
    """(our name for a multimodal checkpoint's tensor, whether it is the image side's: the tower's or the
    projector's, stored as our modules hold them). Hub conversions keep the towers' inner
    `vision_model.`, transformers 5 writes them without it."""
    for theirs, ours in _MULTIMODAL_NAMES:
        if name.startswith(theirs):
            name = ours + name[len(theirs):]
            break
    if name.startswith(("vision_tower.", "multi_modal_projector.")):
        return name.replace("vision_tower.vision_model.", "vision_tower.", 1), True
    return name, False
