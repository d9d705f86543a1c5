"""Mistral 3 (`Mistral3ForConditionalGeneration`: Mistral-Small-3.1/3.2-24B-Instruct, Magistral Small
1.2): a Pixtral vision encoder, a patch merger and a two-layer projector in front of a Mistral
language model.

Pixtral reads an image at its own size (the processor fits it within `longest_edge` in multiples of
patch x spatial_merge pixels): its patches, row-major, go through a pre-norm transformer with
2-D rotary (even frequencies turn with the patch's row, odd ones with its column) attending
within the image; the projector RMS-norms them, merges each 2 x 2 block into one feature (the
block's channels grouped as torch's unfold groups them) and projects it. In the prompt each row of
features is followed by [IMG_BREAK], the last by [IMG_END] (engine/multimodal.py: those positions
keep their token embeddings).
"""

from __future__ import annotations

import torch
from torch import nn

from pagoda.engine.layers.norm import RMSNorm
from pagoda.engine.model_config import ModelConfig, VisionConfig
from pagoda.engine.models.llava import TowerBesideLanguageModel
from pagoda.engine.models.vision import activation, rotate_patches

PIXTRAL_NORM_EPS = 1e-5


class _Attention(nn.Module):
    def __init__(self, v: VisionConfig) -> None:
        super().__init__()
        self.num_heads = v.num_heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(v.hidden_size, v.hidden_size, bias=False)
                                                              for _ in range(4))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = (proj(x).view(n, self.num_heads, -1) for proj in (self.q_proj, self.k_proj, self.v_proj))
        q, k = rotate_patches(q, cos, sin), rotate_patches(k, cos, sin)
        out = nn.functional.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1))
        return self.o_proj(out.transpose(0, 1).reshape(n, -1))


class _Layer(nn.Module):
    def __init__(self, v: VisionConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(v.hidden_size, PIXTRAL_NORM_EPS)
        self.attention = _Attention(v)
        self.ffn_norm = RMSNorm(v.hidden_size, PIXTRAL_NORM_EPS)
        self.feed_forward = nn.Module()
        self.feed_forward.gate_proj = nn.Linear(v.hidden_size, v.intermediate_size, bias=False)
        self.feed_forward.up_proj = nn.Linear(v.hidden_size, v.intermediate_size, bias=False)
        self.feed_forward.down_proj = nn.Linear(v.intermediate_size, v.hidden_size, bias=False)
        self.act = activation(v.hidden_act)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin)
        ff, h = self.feed_forward, self.ffn_norm(x)
        return x + ff.down_proj(self.act(ff.gate_proj(h)) * ff.up_proj(h))


class PixtralVisionTower(nn.Module):
    def __init__(self, v: VisionConfig) -> None:
        super().__init__()
        self.config = v
        self.patch_conv = nn.Conv2d(3, v.hidden_size, v.patch_size, v.patch_size, bias=False)
        self.ln_pre = RMSNorm(v.hidden_size, PIXTRAL_NORM_EPS)
        self.transformer = nn.Module()
        self.transformer.layers = nn.ModuleList(_Layer(v) for _ in range(v.num_layers))
        head_dim = v.hidden_size // v.num_heads
        inv_freq = 1.0 / v.rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, patches: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
        """One image's patches [rows * columns, 3 * P * P], row-major -> their last layer's states."""
        weight = self.patch_conv.weight
        x = self.ln_pre(nn.functional.linear(patches.to(weight.dtype), weight.view(weight.shape[0], -1)))
        r, c = torch.meshgrid(torch.arange(rows, device=x.device), torch.arange(columns, device=x.device),
                              indexing="ij")
        angles = torch.cat([r.flatten()[:, None] * self.inv_freq[0::2], c.flatten()[:, None] * self.inv_freq[1::2]], -1)
        angles = angles.repeat(1, 2)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        for layer in self.transformer.layers:
            x = layer(x, cos, sin)
        return x


class Mistral3Projector(nn.Module):
    """RMSNorm, each merge x merge block of patches merged to one (merging_layer), then a GELU MLP."""

    def __init__(self, v: VisionConfig, text_hidden: int, text_eps: float) -> None:
        super().__init__()
        self.merge = v.spatial_merge
        self.norm = RMSNorm(v.hidden_size, text_eps)
        self.patch_merger = nn.Module()
        self.patch_merger.merging_layer = nn.Linear(v.hidden_size * self.merge**2, v.hidden_size, bias=False)
        self.linear_1 = nn.Linear(v.hidden_size, text_hidden, bias=v.projector_bias)
        self.linear_2 = nn.Linear(text_hidden, text_hidden, bias=v.projector_bias)
        self.act = activation(v.projector_act)

    def forward(self, x: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
        m, d = self.merge, x.shape[-1]
        blocks = self.norm(x).view(rows // m, m, columns // m, m, d).permute(0, 2, 4, 1, 3)  # a block: [d, m, m]
        merged = self.patch_merger.merging_layer(blocks.reshape(-1, d * m * m))
        return self.linear_2(self.act(self.linear_1(merged)))


class Mistral3ForConditionalGeneration(TowerBesideLanguageModel):
    """Mistral 3 over its Mistral language model."""

    family = "Mistral 3"
    language_models = {"mistral": (False, False), "llama": (False, False)}

    def build_image_side(self, cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
        return PixtralVisionTower(cfg.vision), Mistral3Projector(cfg.vision, cfg.hidden_size, cfg.rms_norm_eps)

    def encode_images(self, pixels: torch.Tensor, grids: torch.Tensor | None) -> list[torch.Tensor]:
        """Every image's patches and patch grid (rows, columns) -> each image's features, row-major."""
        counts = (grids[:, 0] * grids[:, 1]).tolist()
        return [self.multi_modal_projector(self.vision_tower(chunk, rows, columns), rows, columns)
                for chunk, (rows, columns) in zip(pixels.split(counts), grids.tolist())]
