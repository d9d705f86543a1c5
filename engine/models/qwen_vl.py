"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3.5 (`Qwen2VLForConditionalGeneration`,
`Qwen2_5_VLForConditionalGeneration`, `Qwen3VLForConditionalGeneration`,
`Qwen3VLMoeForConditionalGeneration`, `Qwen3_5ForConditionalGeneration`,
`Qwen3_5MoeForConditionalGeneration`): a vision transformer that
reads an image at its own resolution in front of a Qwen2 (Qwen3, Qwen3-MoE) language model that
rotates with three positions per token (multimodal RoPE).

The image processor resizes an image to a multiple of patch x spatial_merge pixels and hands its
patches over flattened ([patches, 3 * temporal_patch * patch²], a still image repeated over the
temporal patch) with their grid (1, rows, columns). The tower embeds each patch (a 3-D convolution
that is one matrix product here; Qwen3-VL adds a learned position table resampled to the grid),
rotates q/k by the patch's (row, column) in the head's two halves, runs pre-norm layers of
bidirectional attention within the image (Qwen2.5-VL: within windows of `window_size` pixels,
except in its few full-attention layers), and merges each 2 x 2 block of patches into one feature
of the language model's width. Patches arrive block-major (each block's four together), so
features come out row-major over the merged grid, as the prompt's placeholders and their
positions (engine/multimodal.py `mrope_positions`) expect.

Qwen3-VL's DeepStack: mergers after a few early tower layers make one more feature per image token
for each of the language model's first layers, added to the image tokens' hidden states after that
layer. They travel with the main features as extra columns (VisionConfig.feature_width), so the
runner, chunked prefill and tensor parallelism carry them unchanged.

The tower runs on the driver rank, once per image, image by image (their sizes differ); its
features enter the language model as LLaVA's do (engine/models/llava.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pagoda.engine.layers.norm import RMSNorm
from pagoda.engine.model_config import ModelConfig, VisionConfig
from pagoda.engine.models.llama import Qwen2ForCausalLM, Qwen3ForCausalLM
from pagoda.engine.models.moe import Qwen3MoeForCausalLM
from pagoda.engine.models.qwen3_5 import Qwen3_5ForCausalLM, Qwen3_5MoeForCausalLM
from pagoda.engine.models.vision import activation, rotate_patches

VISION_ROPE_THETA = 10000.0


class _PatchEmbed(nn.Module):
    """The checkpoint's Conv3d over one patch (kernel = stride = the patch): one matrix product."""

    def __init__(self, v: VisionConfig) -> None:
        super().__init__()
        size = (v.temporal_patch, v.patch_size, v.patch_size)
        self.proj = nn.Conv3d(3, v.hidden_size, size, size, bias=v.tower == "qwen3_vl")

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        weight = self.proj.weight
        return nn.functional.linear(patches.to(weight.dtype), weight.view(weight.shape[0], -1), self.proj.bias)


class _Attention(nn.Module):
    def __init__(self, v: VisionConfig) -> None:
        super().__init__()
        self.num_heads = v.num_heads
        self.qkv = nn.Linear(v.hidden_size, 3 * v.hidden_size)
        self.proj = nn.Linear(v.hidden_size, v.hidden_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, windows: _Windows | None) -> torch.Tensor:
        """x: [patches, hidden]; patches attend within their `windows`, or (None) across the image."""
        n = x.shape[0]
        q, k, v = self.qkv(x).view(n, 3, self.num_heads, -1).unbind(1)
        # In float32, as the towers were trained.
        q, k = (rotate_patches(y.float(), cos, sin).to(y.dtype) for y in (q, k))
        if windows is None:
            out = nn.functional.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1))
            return self.proj(out.transpose(0, 1).reshape(n, -1))
        count, longest = windows.valid.shape[0], windows.valid.shape[-1]

        def padded(t: torch.Tensor) -> torch.Tensor:  # [windows, heads, longest, head_dim]
            out = t.new_zeros(count * longest, *t.shape[1:])
            out[windows.slots] = t
            return out.view(count, longest, *t.shape[1:]).transpose(1, 2)

        out = nn.functional.scaled_dot_product_attention(padded(q), padded(k), padded(v), attn_mask=windows.valid)
        return self.proj(out.transpose(1, 2).reshape(count * longest, -1)[windows.slots])


@dataclass(frozen=True)
class _Windows:
    """Qwen2.5-VL's windows as a padded batch (one SDPA call, no patches x patches mask): each patch's
    place in [windows * longest], and which places of each window hold a patch [windows, 1, 1, longest]."""

    slots: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def of(cls, lengths: torch.Tensor) -> _Windows:
        """The windows of `lengths` patches each, patches grouped by window in order."""
        longest = int(lengths.max())
        window = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)
        starts = torch.cumsum(lengths, 0) - lengths
        slots = window * longest + torch.arange(len(window), device=lengths.device) - starts[window]
        valid = torch.arange(longest, device=lengths.device) < lengths[:, None]
        return cls(slots, valid[:, None, None, :])


class _GatedMLP(nn.Module):
    """Qwen2.5-VL's tower MLP: act(gate) * up, with biases."""

    def __init__(self, v: VisionConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(v.hidden_size, v.intermediate_size)
        self.up_proj = nn.Linear(v.hidden_size, v.intermediate_size)
        self.down_proj = nn.Linear(v.intermediate_size, v.hidden_size)
        self.act = activation(v.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class _MLP(nn.Module):
    """Qwen2-VL's and Qwen3-VL's tower MLP: fc2(act(fc1))."""

    def __init__(self, v: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(v.hidden_size, v.intermediate_size)
        self.fc2 = nn.Linear(v.intermediate_size, v.hidden_size)
        self.act = activation(v.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _norm(v: VisionConfig, width: int) -> nn.Module:
    """LayerNorm (Qwen2-VL, Qwen3-VL) or RMSNorm (Qwen2.5-VL), all at eps 1e-6."""
    return RMSNorm(width, v.layer_norm_eps) if v.tower == "qwen2_5_vl" else nn.LayerNorm(width, eps=v.layer_norm_eps)


class _Block(nn.Module):
    def __init__(self, v: VisionConfig) -> None:
        super().__init__()
        self.norm1, self.norm2 = _norm(v, v.hidden_size), _norm(v, v.hidden_size)
        self.attn = _Attention(v)
        self.mlp = _GatedMLP(v) if v.tower == "qwen2_5_vl" else _MLP(v)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, windows: _Windows | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin, windows)
        return x + self.mlp(self.norm2(x))


class _PatchMerger(nn.Module):
    """Each block of spatial_merge² patches, normed, concatenated and through a GELU MLP to one feature;
    `after_concat`: normed once concatenated (Qwen3-VL's DeepStack mergers) instead of patch by patch."""

    def __init__(self, v: VisionConfig, after_concat: bool = False) -> None:
        super().__init__()
        width = v.hidden_size * v.spatial_merge**2
        self.after_concat = after_concat
        self.ln_q = _norm(v, width if after_concat else v.hidden_size)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, v.out_hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = self.mlp[0].in_features
        return self.mlp(self.ln_q(x.reshape(-1, width)) if self.after_concat else self.ln_q(x).reshape(-1, width))


class QwenVisionTower(nn.Module):
    """Qwen2-VL's (Qwen2.5-VL's windowed, Qwen3-VL's with DeepStack) vision transformer and patch merger."""

    def __init__(self, v: VisionConfig) -> None:
        super().__init__()
        self.config = v
        self.patch_embed = _PatchEmbed(v)
        if v.position_embeddings:
            self.pos_embed = nn.Embedding(v.position_embeddings, v.hidden_size)
        self.blocks = nn.ModuleList(_Block(v) for _ in range(v.num_layers))
        self.merger = _PatchMerger(v)
        self.deepstack_merger_list = nn.ModuleList(_PatchMerger(v, after_concat=True) for _ in v.deepstack_layers)
        half = v.hidden_size // v.num_heads // 2  # row and column each turn a quarter of the head's frequencies
        self.register_buffer("inv_freq", 1.0 / VISION_ROPE_THETA ** (torch.arange(0, half, 2).float() / half),
                             persistent=False)

    def forward(self, patches: torch.Tensor, grids: torch.Tensor) -> list[torch.Tensor]:
        """Every image's patches [patches, 3 * T * P * P] with their grids [images, 3] -> each image's
        features [rows * columns / merge², out_hidden_size * (1 + DeepStack layers)]."""
        counts = grids.prod(dim=1).tolist()
        return [self._image(chunk, tuple(grid)) for chunk, grid in zip(patches.split(counts), grids.tolist())]

    def _image(self, patches: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """One image's features (a still image: one frame)."""
        v, unit = self.config, self.config.spatial_merge**2
        x = self.patch_embed(patches)
        positions = _patch_positions(grid, v.spatial_merge).to(x.device)
        if v.position_embeddings:
            x = x + self._resampled_positions(grid)[positions[:, 0], positions[:, 1]].to(x.dtype)
        angles = positions.float()[..., None] * self.inv_freq
        angles = angles.flatten(1).repeat(1, 2)  # [patches, head_dim]: (row, column) halves, twice
        order = windows = None
        if v.window_size:  # windows' blocks together (each block's patches stay contiguous)
            order, lengths = (t.to(x.device) for t in _windows(grid, v))
            windows = _Windows.of(lengths * unit)
            x = x.view(-1, unit, x.shape[-1])[order].flatten(0, 1)
            angles = angles.view(-1, unit, angles.shape[-1])[order].flatten(0, 1)
        cos, sin = angles.cos(), angles.sin()
        stacked = []
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, None if i in v.full_attention_layers else windows)
            if i in v.deepstack_layers:
                stacked.append(self.deepstack_merger_list[v.deepstack_layers.index(i)](x))
        features = torch.cat([self.merger(x), *stacked], dim=-1)
        return features if order is None else features[torch.argsort(order)]

    def _resampled_positions(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """Qwen3-VL's learned square position table resampled bilinearly (corners aligned) to the image's
        patch grid, [rows, columns, hidden]."""
        table = self.pos_embed.weight
        side = int(table.shape[0] ** 0.5)
        square = table.float().view(side, side, -1).permute(2, 0, 1)[None]
        return nn.functional.interpolate(square, size=grid[1:], mode="bilinear", align_corners=True)[0].permute(1, 2, 0)


def _patch_positions(grid: tuple[int, int, int], merge: int) -> torch.Tensor:
    """(row, column) of each patch [patches, 2], patches in block-major order (the processor's): each
    merge x merge block's patches together, blocks row-major, frames one after another."""
    frames, rows, columns = grid
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(columns), indexing="ij")
    shape = (rows // merge, merge, columns // merge, merge)
    blocks = torch.stack([r.reshape(shape).transpose(1, 2).flatten(), c.reshape(shape).transpose(1, 2).flatten()], -1)
    return blocks.repeat(frames, 1)


def _windows(grid: tuple[int, int, int], v: VisionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2.5-VL's windows over one image: (its merged blocks in window order, each window's block
    count). Windows of window_size pixels tile the block grid row-major (the last row and column of
    windows may be narrower); inside a window its blocks stay row-major."""
    frames, rows, columns = grid[0], grid[1] // v.spatial_merge, grid[2] // v.spatial_merge
    side = v.window_size // v.spatial_merge // v.patch_size
    blocks = torch.arange(frames * rows * columns).view(frames, rows, columns)
    order = [frame[top : top + side, left : left + side].flatten()
             for frame in blocks for top in range(0, rows, side) for left in range(0, columns, side)]
    return torch.cat(order), torch.tensor([len(window) for window in order])


class _QwenVL:
    """What the Qwen-VL families add to their language model: the vision tower, its features for the
    prompt's images, and both checkpoint namings (`model.*` and `visual.*` of the hub's Qwen2-VL
    checkpoints, `model.language_model.*` and `model.visual.*` of transformers 5 and Qwen3-VL)."""

    # Qwen3-VL's names for the tower's parts -> ours (Qwen2-VL's): in its mergers, and elsewhere.
    _MERGER_RENAMES = ((".norm.", ".ln_q."), (".linear_fc1.", ".mlp.0."), (".linear_fc2.", ".mlp.2."))
    _BLOCK_RENAMES = ((".mlp.linear_fc", ".mlp.fc"),)

    def __init__(self, cfg: ModelConfig) -> None:
        if cfg.vision is None or "mrope_section" not in cfg.rope.scaling:
            raise ValueError(f"{cfg.architecture} needs a vision_config and rope mrope_section in config.json")
        super().__init__(cfg)  # type: ignore[call-arg]
        self.visual = QwenVisionTower(cfg.vision)

    def encode_images(self, pixels: torch.Tensor, grids: torch.Tensor | None) -> list[torch.Tensor]:
        """Every image's patches and grid -> each image's features in the language model's space."""
        return self.visual(pixels, grids)

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        for theirs, ours in (("model.language_model.", "model."), ("model.visual.", "visual.")):
            if name.startswith(theirs):
                name = ours + name[len(theirs):]
                break
        if not name.startswith("visual."):
            return super().checkpoint_target(name)  # type: ignore[misc]
        for theirs, ours in self._MERGER_RENAMES if "merger" in name else self._BLOCK_RENAMES:
            name = name.replace(theirs, ours)
        return name, None


class Qwen2VLForConditionalGeneration(_QwenVL, Qwen2ForCausalLM):
    """Qwen2-VL: the Qwen2 language model (its rotary embedding reads `mrope_section`) and the tower."""


class Qwen2_5_VLForConditionalGeneration(_QwenVL, Qwen2ForCausalLM):  # noqa: N801 (transformers' name)
    """Qwen2.5-VL: the same with a windowed, RMS-normed, gated-MLP tower (the VisionConfig says so)."""


class Qwen3VLForConditionalGeneration(_QwenVL, Qwen3ForCausalLM):
    """Qwen3-VL (2B to 32B): the Qwen3 language model (q/k norms) rotating with interleaved multimodal
    RoPE, and the tower with DeepStack."""


class Qwen3VLMoeForConditionalGeneration(_QwenVL, Qwen3MoeForCausalLM):
    """Qwen3-VL-30B-A3B and 235B-A22B: the same over Qwen3-MoE, whose experts the hub's checkpoints
    store stacked and transposed ([experts, in, out]; FusedMoE reads either orientation)."""


class Qwen3_5ForConditionalGeneration(_QwenVL, Qwen3_5ForCausalLM):  # noqa: N801 (transformers' name)
    """Qwen3.5 as the hub ships it (every size takes images): the Qwen3.5 language model (Gated DeltaNet and
    gated attention, rotating with interleaved multimodal RoPE) and Qwen3-VL's tower without DeepStack."""


class Qwen3_5MoeForConditionalGeneration(_QwenVL, Qwen3_5MoeForCausalLM):  # noqa: N801
    """Qwen3.5's MoE models (35B-A3B to 397B-A17B) with the same tower."""
