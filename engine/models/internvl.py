"""InternVL 3 and 3.5 (`InternVLForConditionalGeneration`: OpenGVLab/InternVL3-1B-hf ... 78B, InternVL3.5
-hf): an InternViT vision tower, pixel shuffle and a two-layer projector in front of a Qwen2, Qwen3 or
Llama language model.

The image processor (GotOcr2's) cuts an image into up to `max_patches` tiles of the tower's size
chosen by its aspect ratio, plus a thumbnail of the whole when it cuts it; every tile becomes
(side / patch)² patch features, pixel-shuffled 2 x 2 into a quarter as many features four times as
wide, normed and projected to the language model's width: `tokens_per_image` features per tile, the
image's run of placeholders as long as its tiles' (wrapped in <img> ... </img>, as InternVL's
processor writes it). The tower is a pre-norm ViT with a class token and learned positions, layer
scale on both branches, and optionally q/k RMS norms across all heads (InternViT-6B).
"""

from __future__ import annotations

import torch
from torch import nn

from pagoda.engine.layers.norm import RMSNorm
from pagoda.engine.model_config import ModelConfig, VisionConfig
from pagoda.engine.models.llava import TowerBesideLanguageModel
from pagoda.engine.models.vision import activation

def _norm(v: VisionConfig) -> nn.Module:
    return RMSNorm(v.hidden_size, v.layer_norm_eps) if v.norm == "rms_norm" else nn.LayerNorm(v.hidden_size,
                                                                                              eps=v.layer_norm_eps)


class _Attention(nn.Module):
    def __init__(self, v: VisionConfig) -> None:
        super().__init__()
        self.num_heads = v.num_heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(v.hidden_size, v.hidden_size, bias=v.attention_bias)
                                                 for _ in range(3))
        self.projection_layer = nn.Linear(v.hidden_size, v.hidden_size)
        self.q_norm = RMSNorm(v.hidden_size, 1e-6) if v.qk_norm else None
        self.k_norm = RMSNorm(v.hidden_size, 1e-6) if v.qk_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (y.view(b, t, self.num_heads, -1).transpose(1, 2) for y in (q, k, v))
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.projection_layer(out.transpose(1, 2).reshape(b, t, d))


class _Layer(nn.Module):
    """Pre-norm attention and MLP, each branch scaled per channel (lambda_1, lambda_2) before its residual."""

    def __init__(self, v: VisionConfig) -> None:
        super().__init__()
        self.attention = _Attention(v)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(v.hidden_size, v.intermediate_size)
        self.mlp.fc2 = nn.Linear(v.intermediate_size, v.hidden_size)
        self.act = activation(v.hidden_act)
        self.layernorm_before, self.layernorm_after = _norm(v), _norm(v)
        self.lambda_1 = nn.Parameter(torch.empty(v.hidden_size), requires_grad=False)
        self.lambda_2 = nn.Parameter(torch.empty(v.hidden_size), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.lambda_1 * self.attention(self.layernorm_before(x))
        return x + self.lambda_2 * self.mlp.fc2(self.act(self.mlp.fc1(self.layernorm_after(x))))


class InternVisionTower(nn.Module):
    """InternViT up to its feature layer (the final norm only after the last layer, where the checkpoint has one)."""

    def __init__(self, v: VisionConfig) -> None:
        super().__init__()
        self.config = v
        patches = (v.image_size // v.patch_size) ** 2
        self.embeddings = nn.Module()
        self.embeddings.cls_token = nn.Parameter(torch.empty(1, 1, v.hidden_size), requires_grad=False)
        self.embeddings.position_embeddings = nn.Parameter(torch.empty(1, patches + 1, v.hidden_size),
                                                           requires_grad=False)
        self.embeddings.patch_embeddings = nn.Module()
        self.embeddings.patch_embeddings.projection = nn.Conv2d(3, v.hidden_size, v.patch_size, v.patch_size)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(_Layer(v) for _ in range(v.num_layers))
        self.layernorm = nn.LayerNorm(v.hidden_size, eps=v.layer_norm_eps) if v.final_norm else None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """[tiles, 3, side, side] -> the feature layer's states of the patches [tiles, patches, hidden] (the
        class token dropped, as InternVL's "default" strategy does)."""
        v = self.config
        x = self.embeddings.patch_embeddings.projection(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.embeddings.cls_token.expand(x.shape[0], 1, -1), x], dim=1)
        x = x + self.embeddings.position_embeddings
        for layer in self.encoder.layer[: v.layers_run]:
            x = layer(x)
        if self.layernorm is not None and v.layers_run == v.num_layers:
            x = self.layernorm(x)
        return x[:, 1:]


def pixel_shuffle(x: torch.Tensor, merge: int) -> torch.Tensor:
    """[tiles, side * side, C] -> [tiles, (side / merge)², C * merge²]: each merge x merge block of patches
    (blocks row-major) into one feature, its patches' channels side by side row by row (the order InternVL's
    two reshapes give)."""
    tiles, count, channels = x.shape
    side = int(count**0.5)
    blocks = x.view(tiles, side // merge, merge, side // merge, merge, channels).permute(0, 1, 3, 2, 4, 5)
    return blocks.reshape(tiles, -1, channels * merge * merge)


class InternVLProjector(nn.Module):
    def __init__(self, v: VisionConfig, text_hidden: int) -> None:
        super().__init__()
        width = v.hidden_size * v.spatial_merge**2
        self.layer_norm = nn.LayerNorm(width)
        self.linear_1 = nn.Linear(width, text_hidden)
        self.linear_2 = nn.Linear(text_hidden, text_hidden)
        self.act = activation(v.projector_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(self.layer_norm(x))))


class InternVLForConditionalGeneration(TowerBesideLanguageModel):
    """InternVL over Qwen2 (q/k/v biases), Qwen3 (q/k norms) or Llama."""

    family = "InternVL"
    language_models = {"qwen2": (True, False), "qwen3": (False, True), "llama": (False, False)}

    def build_image_side(self, cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
        return InternVisionTower(cfg.vision), InternVLProjector(cfg.vision, cfg.hidden_size)

    def encode_images(self, pixels: torch.Tensor, grids: torch.Tensor | None) -> list[torch.Tensor]:
        """Every image's tiles [tiles, 3, side, side] and each image's tile count (`grids`) -> each image's
        features [tiles * tokens_per_image, hidden], its tiles' one after another."""
        tiles = self.vision_tower(pixels.to(self.multi_modal_projector.linear_1.weight.dtype))
        features = self.multi_modal_projector(pixel_shuffle(tiles, self.config.vision.spatial_merge))
        return list(features.flatten(0, 1).split((grids * features.shape[1]).tolist()))
