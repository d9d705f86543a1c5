"""Gemma 3 (text): `Gemma3ForCausalLM`, the 1B model and the language half of the larger ones;
and Gemma 2 (`Gemma2ForCausalLM`), its predecessor.

Against the Llama family Gemma 3 differs in ways each small but none optional:
embeddings scaled by sqrt(hidden_size); RMSNorms that scale by (1 + weight)
(`GemmaRMSNorm`), four per layer (after attention and after the MLP too), and
on q and k; a GeGLU MLP (tanh GELU); the softmax scale from
`query_pre_attn_scalar`; and interleaved attention: most layers see a sliding
window (`layer_types`, or every `sliding_window_pattern`-th layer global) and
rotate with the local base frequency, the global layers with `rope_theta`
and the rope scaling. Gemma 2 has no q/k norms and one rotary base, alternates
sliding and global layers, and soft-caps logits, cap * tanh(logit / cap): the
attention scores' (`attn_logit_softcapping`, inside the kernels) and the LM
head's (`final_logit_softcapping`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagoda.engine.attention import AttentionMetadata
from pagoda.engine.layers.activation import GeluAndMul
from pagoda.engine.layers.embedding import VocabParallelEmbedding
from pagoda.engine.layers.norm import GemmaRMSNorm
from pagoda.engine.model_config import ModelConfig, RopeConfig, sliding_rope
from pagoda.engine.models.llama import DecoderAttention, DecoderMLP, LlamaForCausalLM
from pagoda.engine.models.vision import SiglipVisionTower, multimodal_checkpoint_name

SLIDING, FULL = "sliding_attention", "full_attention"


def layer_types(cfg: ModelConfig, default_pattern: int = 6) -> list[str]:
    """Which layers slide: config.json's `layer_types`, else every pattern-th layer is global."""
    hf = cfg.hf_config
    if hf.get("layer_types"):
        return list(hf["layer_types"])
    pattern = int(hf.get("sliding_window_pattern") or default_pattern)
    return [SLIDING if (i + 1) % pattern else FULL for i in range(cfg.num_layers)]


def local_rope(cfg: ModelConfig) -> RopeConfig:
    """The sliding layers' rotary settings: `rope_parameters.sliding_attention`, else the classic
    `rope_local_base_freq` with no scaling."""
    return sliding_rope(cfg.hf_config) or RopeConfig(theta=float(cfg.hf_config.get("rope_local_base_freq", 10000.0)))


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, sliding: bool, gemma2: bool = False) -> None:
        super().__init__()
        scale = float(cfg.hf_config.get("query_pre_attn_scalar") or cfg.head_dim) ** -0.5
        rope = local_rope(cfg) if sliding and not gemma2 else cfg.rope
        self.self_attn = DecoderAttention(
            cfg, qkv_bias=cfg.attention_bias, qk_norm=not gemma2, rope=rope,
            sliding_window=cfg.sliding_window if sliding else None, scale=scale, norm=GemmaRMSNorm,
            softcap=float(cfg.hf_config.get("attn_logit_softcapping") or 0.0))
        self.mlp = DecoderMLP(cfg.hidden_size, cfg.intermediate_size, act=GeluAndMul)
        eps = cfg.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(cfg.hidden_size, eps)
        self.post_attention_layernorm = GemmaRMSNorm(cfg.hidden_size, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(cfg.hidden_size, eps)
        self.post_feedforward_layernorm = GemmaRMSNorm(cfg.hidden_size, eps)

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None, meta: AttentionMetadata
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x is the previous layer's output, not yet added to the residual stream (None: the embeddings)."""
        x, residual = self.input_layernorm.with_residual(x, residual)
        x = self.post_attention_layernorm(self.self_attn(positions, x, meta))
        x, residual = self.pre_feedforward_layernorm(x, residual)
        return self.post_feedforward_layernorm(self.mlp(x)), residual


class Gemma3Model(nn.Module):
    def __init__(self, cfg: ModelConfig, gemma2: bool = False) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.embed_scale = cfg.hidden_size**0.5
        types = layer_types(cfg, default_pattern=2 if gemma2 else 6)
        if len(types) != cfg.num_layers or set(types) - {SLIDING, FULL}:
            raise ValueError(f"layer_types must name {cfg.num_layers} layers, each {SLIDING} or {FULL}: {types}")
        self.layers = nn.ModuleList(Gemma3DecoderLayer(cfg, kind == SLIDING, gemma2) for kind in types)
        self.norm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                image_embeds: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """`image_embeds` (rows, features): image features in place of those rows' (scaled) embeddings."""
        x = self.embed_tokens(input_ids)
        # The scale rounded to the model dtype first, as transformers applies it.
        x, residual = x * torch.tensor(self.embed_scale, dtype=x.dtype), None
        if image_embeds is not None:
            rows, features = image_embeds
            x = x.index_copy(0, rows, features.to(x.dtype))
        for layer in self.layers:
            x, residual = layer(positions, x, residual, meta)
        x, _ = self.norm(x, residual)
        return x


class Gemma3ForCausalLM(LlamaForCausalLM):
    def build_decoder(self, cfg: ModelConfig, qkv_bias: bool) -> nn.Module:
        if cfg.hf_config.get("use_bidirectional_attention"):
            raise ValueError("use_bidirectional_attention (Gemma 3 embedding models) is not supported")
        return Gemma3Model(cfg)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head's logits, soft-capped where the config says (Gemma 2; Gemma 3 configs leave it null)."""
        logits = self.lm_head(hidden)
        cap = float(self.config.hf_config.get("final_logit_softcapping") or 0.0)
        return cap * torch.tanh(logits / cap) if cap > 0 else logits


class Gemma2ForCausalLM(Gemma3ForCausalLM):
    def build_decoder(self, cfg: ModelConfig, qkv_bias: bool) -> nn.Module:
        return Gemma3Model(cfg, gemma2=True)


class Gemma3MultiModalProjector(nn.Module):
    """Gemma 3's projector: the patch grid average-pooled to `tokens_per_image` features, normalized
    (Gemma's 1 + weight RMSNorm), then one matrix into the language model's width."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        v = cfg.vision
        self.patches_per_side = v.image_size // v.patch_size
        self.pool = self.patches_per_side // int(v.tokens_per_image**0.5)
        self.mm_soft_emb_norm = GemmaRMSNorm(v.hidden_size, v.layer_norm_eps)
        self.mm_input_projection_weight = nn.Parameter(torch.empty(v.hidden_size, cfg.hidden_size), requires_grad=False)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        b, _, d = patches.shape
        grid = patches.transpose(1, 2).reshape(b, d, self.patches_per_side, self.patches_per_side)
        pooled = nn.functional.avg_pool2d(grid, self.pool).flatten(2).transpose(1, 2)
        return self.mm_soft_emb_norm(pooled) @ self.mm_input_projection_weight


class Gemma3ForConditionalGeneration(Gemma3ForCausalLM):
    """Gemma 3 4B and up: the language model with its SigLIP vision tower and projector, under either
    naming of the language model (`language_model.model.*`, or `model.language_model.*` of newer
    conversions). An image's tokens attend to one another both ways (VisionConfig.bidirectional)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.vision_tower = SiglipVisionTower(cfg.vision)
        self.multi_modal_projector = Gemma3MultiModalProjector(cfg)

    def encode_images(self, pixels: torch.Tensor, grids: torch.Tensor | None) -> torch.Tensor:
        """[images, 3, H, W] -> [images, tokens_per_image, hidden] in the language model's space (images of
        one size: no grids)."""
        weight = self.multi_modal_projector.mm_input_projection_weight
        return self.multi_modal_projector(self.vision_tower(pixels.to(weight.dtype)))

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        name, image_side = multimodal_checkpoint_name(name)
        return (name, None) if image_side else super().checkpoint_target(name)
