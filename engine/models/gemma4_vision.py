"""Gemma 4's vision tower and its embedder into the language model (named as transformers names them).

An image comes at its own aspect ratio, resized by its processor to at most `max_soft_tokens`
features: a grid of rows x cols patches (both multiples of the pooling kernel), each patch's pixels
flattened. The tower sees one image's patches at a time:
- each patch's pixels, mapped from [0, 1] to [-1, 1], projected, plus learned embeddings of its column
  and its row;
- pre- and post-normed layers of bidirectional attention (q/k/v normed per head, v without a weight, an
  unscaled softmax; 2-D rotary: the first half of each head turns with the patch's column, the second
  with its row) and a GeGLU MLP; with `use_clipped_linears`, every projection's input and output are
  clamped to bounds the checkpoint carries;
- average pooling of kernel x kernel patches into one feature, times sqrt(hidden) (in fp32), and with
  `standardize` a learned shift and scale.
The embedder normalizes each feature (no weight) and projects it to the language model's width.
"""

from __future__ import annotations

import torch
from torch import nn

from pagoda.engine.layers.norm import Fp32RMSNorm
from pagoda.engine.model_config import VisionConfig
from pagoda.engine.models.vision import activation, rotate_patches
from pagoda.kernels import ops


class ClippableLinear(nn.Module):
    """A bias-free projection (`linear`); `clipped`: input and output clamped to the checkpoint's bounds."""

    def __init__(self, in_features: int, out_features: int, clipped: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.clipped = clipped
        if clipped:
            for name in ("input_min", "input_max", "output_min", "output_max"):
                setattr(self, name, nn.Parameter(torch.empty(()), requires_grad=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.clipped:
            return self.linear(x)
        return self.linear(x.clamp(self.input_min, self.input_max)).clamp(self.output_min, self.output_max)


def _unscaled_rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS normalization without a weight, computed in fp32 and rounded once (Gemma 4's v and embedder norms)."""
    return ops.rms_norm(x, torch.ones(x.shape[-1], dtype=torch.float32, device=x.device), eps, False)


class _Attention(nn.Module):
    def __init__(self, v: VisionConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.eps = v.num_heads, v.kv_heads, v.head_dim, v.layer_norm_eps
        self.q_proj = ClippableLinear(v.hidden_size, v.num_heads * v.head_dim, v.clipped)
        self.k_proj = ClippableLinear(v.hidden_size, v.kv_heads * v.head_dim, v.clipped)
        self.v_proj = ClippableLinear(v.hidden_size, v.kv_heads * v.head_dim, v.clipped)
        self.o_proj = ClippableLinear(v.num_heads * v.head_dim, v.hidden_size, v.clipped)
        self.q_norm = Fp32RMSNorm(v.head_dim, v.layer_norm_eps)
        self.k_norm = Fp32RMSNorm(v.head_dim, v.layer_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        n, half = x.shape[0], self.head_dim // 2
        q = self.q_norm(self.q_proj(x).view(n, self.heads, self.head_dim))
        k = self.k_norm(self.k_proj(x).view(n, self.kv_heads, self.head_dim))
        v = _unscaled_rms_norm(self.v_proj(x).view(n, self.kv_heads, self.head_dim), self.eps)
        # The first half of each head rotates with the column, the second with the row (cos/sin: [n, 2, half]).
        q = torch.cat([rotate_patches(part, cos[:, i], sin[:, i]) for i, part in enumerate(q.split(half, -1))], -1)
        k = torch.cat([rotate_patches(part, cos[:, i], sin[:, i]) for i, part in enumerate(k.split(half, -1))], -1)
        out = nn.functional.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                                         scale=1.0, enable_gqa=self.kv_heads != self.heads)
        return self.o_proj(out.transpose(0, 1).reshape(n, -1))


class _Mlp(nn.Module):
    def __init__(self, v: VisionConfig) -> None:
        super().__init__()
        self.gate_proj = ClippableLinear(v.hidden_size, v.intermediate_size, v.clipped)
        self.up_proj = ClippableLinear(v.hidden_size, v.intermediate_size, v.clipped)
        self.down_proj = ClippableLinear(v.intermediate_size, v.hidden_size, v.clipped)
        self.act = activation(v.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class _Layer(nn.Module):
    def __init__(self, v: VisionConfig) -> None:
        super().__init__()
        self.self_attn = _Attention(v)
        self.mlp = _Mlp(v)
        for name in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm"):
            setattr(self, name, Fp32RMSNorm(v.hidden_size, v.layer_norm_eps))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma4VisionTower(nn.Module):
    def __init__(self, v: VisionConfig) -> None:
        super().__init__()
        self.config = v
        self.patch_embedder = nn.Module()
        self.patch_embedder.input_proj = nn.Linear(3 * v.patch_size**2, v.hidden_size, bias=False)
        self.patch_embedder.position_embedding_table = nn.Parameter(
            torch.empty(2, v.position_embeddings, v.hidden_size), requires_grad=False)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(_Layer(v) for _ in range(v.num_layers))
        if v.standardize:
            self.std_bias = nn.Parameter(torch.empty(v.hidden_size), requires_grad=False)
            self.std_scale = nn.Parameter(torch.empty(v.hidden_size), requires_grad=False)
        quarter = v.head_dim // 4  # frequencies per axis: each axis turns half of the head
        self.register_buffer("inv_freq", 1.0 / v.rope_theta ** (torch.arange(quarter, dtype=torch.float32) / quarter),
                             persistent=False)

    def _rotary(self, rows: int, cols: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [patches, 2, head_dim / 2] of a rows x cols grid, row-major: axis 0 the column, 1 the row."""
        device = self.inv_freq.device
        row, col = torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij")
        angles = torch.stack([col.flatten(), row.flatten()], dim=-1)[..., None].float() * self.inv_freq
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def encode(self, patches: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """One image's patches [rows * cols, 3 * patch^2] (row-major, pixels in [0, 1]) -> its pooled
        features [(rows / k) * (cols / k), hidden] in fp32 (k: the pooling kernel)."""
        v, dtype = self.config, self.patch_embedder.input_proj.weight.dtype
        table = self.patch_embedder.position_embedding_table
        x = self.patch_embedder.input_proj((2 * (patches - 0.5)).to(dtype))
        row, col = torch.meshgrid(torch.arange(rows, device=x.device), torch.arange(cols, device=x.device), indexing="ij")
        x = x + (table[0][col.flatten()] + table[1][row.flatten()])
        cos, sin = self._rotary(rows, cols, dtype)
        for layer in self.encoder.layers:
            x = layer(x, cos, sin)
        k = v.spatial_merge
        grid = x.float().view(rows, cols, -1).permute(2, 0, 1)
        pooled = nn.functional.avg_pool2d(grid, k).flatten(1).t().to(dtype)  # row-major over the pooled grid
        features = pooled.float() * v.hidden_size**0.5
        if v.standardize:
            features = (features - self.std_bias.float()) * self.std_scale.float()
        return features


class Gemma4MultimodalEmbedder(nn.Module):
    """A feature normalized (no weight) then projected into the language model's width."""

    def __init__(self, width: int, text_hidden: int, eps: float) -> None:
        super().__init__()
        self.embedding_projection = nn.Linear(width, text_hidden, bias=False)
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        dtype = self.embedding_projection.weight.dtype
        return self.embedding_projection(_unscaled_rms_norm(features.to(dtype), self.eps))
