"""Gemma 4: `Gemma4ForCausalLM`, and `Gemma4ForConditionalGeneration` as the hub ships E2B, E4B,
26B-A4B and 31B: text and images (the vision tower: engine/models/gemma4_vision.py); audio is not served.

Against Gemma 3 it changes most of what a layer holds:
- sliding and global layers differ in shape: the global ones have wider heads (`global_head_dim`),
  may have fewer KV heads (`num_global_key_value_heads`) and, with `attention_k_eq_v`, no value
  projection (the values are the keys before their norm and rotation). The KV cache sizes each
  layer slot for the widest (layers/attention.py's kv_cache_row);
- the last `num_kv_shared_layers` layers keep no K/V: each reads the cache of the last earlier layer
  of its kind, so they take no cache memory (and, with `use_double_wide_mlp`, have MLPs twice as wide);
- q, k and v are RMS-normalized per head (v without a weight), the softmax is unscaled, and the
  global layers rotate with proportional RoPE (a quarter of the frequencies turning, over the whole head);
- per-layer embeddings (E2B, E4B: `hidden_size_per_layer_input`): a second embedding table gives
  every token a small vector per layer, mixed with a projection of its embedding; each layer gates
  its output by it and adds the result back;
- the 26B-A4B's layers run routed experts (GeGLU) beside the dense MLP, each branch normalized on
  its own; its router normalizes and scales its input and scales each expert's weight;
- norms multiply by their weight (no 1 + w) in fp32, and every layer's output is scaled by its
  `layer_scalar`;
- an image's tokens attend to the whole image in the sliding layers, causally in the global ones, and
  take the padding token's per-layer embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pagoda.engine.attention import AttentionMetadata
from pagoda.engine.distributed import all_reduce
from pagoda.engine.layers.activation import GeluAndMul
from pagoda.engine.layers.attention import Attention
from pagoda.engine.layers.embedding import VocabParallelEmbedding
from pagoda.engine.layers.linear import QKVParallelLinear, ReplicatedLinear, ReplicatedProjection, RowParallelLinear
from pagoda.engine.layers.moe import STACKED, FusedMoE
from pagoda.engine.layers.norm import Fp32RMSNorm
from pagoda.engine.layers.rotary import RotaryEmbedding
from pagoda.engine.model_config import ModelConfig, sliding_rope
from pagoda.engine.models.gemma3 import FULL, SLIDING, Gemma3ForCausalLM
from pagoda.engine.models.llama import DecoderMLP
from pagoda.engine.models.gemma4_vision import Gemma4MultimodalEmbedder, Gemma4VisionTower
from pagoda.engine.models.vision import multimodal_checkpoint_name
from pagoda.kernels import ops

# KV shared: (the layer's K/V of this step, by kind), which the layers reading them take.
SharedKV = dict[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class LayerPlan:
    """One layer's attention: its kind, KV heads and head size, whether it projects values (else they
    are its keys), and which earlier layer's K/V it reads (None: its own)."""

    kind: str
    num_kv_heads: int
    head_dim: int
    values: bool
    owner: int | None


def _overrides(hf: dict[str, Any], layer: int, kind: str) -> dict[str, Any]:
    """A layer's own head_dim and num_key_value_heads: `per_layer_config` as transformers writes it, or
    the global layers' `global_head_dim` (512 where unnamed, transformers' default) and, with
    `attention_k_eq_v`, `num_global_key_value_heads`, as hub configs name them."""
    per_layer = hf.get("per_layer_config")
    if per_layer is not None:
        return dict(per_layer.get(str(layer)) or per_layer.get(layer) or {})
    if kind != FULL:
        return {}
    out = {"head_dim": int(hf.get("global_head_dim") or 512)}
    if hf.get("attention_k_eq_v") and hf.get("num_global_key_value_heads") is not None:
        out["num_key_value_heads"] = int(hf["num_global_key_value_heads"])
    return out


def layer_plans(cfg: ModelConfig) -> list[LayerPlan]:
    """Every layer's attention plan (see LayerPlan), checked against what the engine serves."""
    hf = cfg.hf_config
    kinds = list(hf.get("layer_types") or [])
    if len(kinds) != cfg.num_layers or set(kinds) - {SLIDING, FULL}:
        raise ValueError(f"layer_types must name {cfg.num_layers} layers, each {SLIDING} or {FULL}: {kinds}")
    shared = int(hf.get("num_kv_shared_layers") or 0)
    first_shared = cfg.num_layers - shared
    if shared and set(kinds[first_shared:]) - set(kinds[:first_shared]):
        raise ValueError("every kind of layer that shares K/V needs an earlier layer of its kind to share them from")
    plans = []
    for i, kind in enumerate(kinds):
        own = _overrides(hf, i, kind)
        owner = max(j for j in range(first_shared) if kinds[j] == kind) if i >= first_shared else None
        plans.append(LayerPlan(kind, int(own.get("num_key_value_heads") or cfg.num_kv_heads),
                               int(own.get("head_dim") or cfg.head_dim),
                               not (hf.get("attention_k_eq_v") and kind == FULL), owner))
    for plan in plans:
        owner = plans[plan.owner] if plan.owner is not None else plan
        if (owner.num_kv_heads, owner.head_dim) != (plan.num_kv_heads, plan.head_dim):
            raise ValueError("a layer sharing K/V must have the heads of the layer it shares them from")
    return plans


class Gemma4Attention(nn.Module):
    """Attention with per-head q/k/v norms, unscaled softmax and its kind's rotation; a sharing layer
    projects only queries and reads its owner's K/V (of this step from `shared`, and from the cache)."""

    def __init__(self, cfg: ModelConfig, plan: LayerPlan, owner: Gemma4Attention | None) -> None:
        super().__init__()
        self.kind, self.values, self.shares = plan.kind, plan.values, owner is not None
        head_dim, eps = plan.head_dim, cfg.rms_norm_eps
        parts = ("q",) if self.shares else ("q", "k", "v") if plan.values else ("q", "k")
        self.qkv_proj = QKVParallelLinear(cfg.hidden_size, head_dim, cfg.num_heads, plan.num_kv_heads,
                                          cfg.attention_bias, parts=parts)
        self.q_size = self.qkv_proj.num_heads * head_dim
        self.kv_size = self.qkv_proj.num_kv_heads * head_dim
        self.o_proj = RowParallelLinear(cfg.num_heads * head_dim, cfg.hidden_size, bias=cfg.attention_bias)
        self.q_norm = Fp32RMSNorm(head_dim, eps)
        self.k_norm = None if self.shares else Fp32RMSNorm(head_dim, eps)
        self.register_buffer("v_norm_weight", torch.ones(head_dim, dtype=torch.float32), persistent=False)
        self.eps = eps
        sliding = plan.kind == SLIDING
        rope = (sliding_rope(cfg.hf_config) or cfg.rope) if sliding else cfg.rope
        self.rotary_emb = RotaryEmbedding(head_dim, cfg.max_position_embeddings, rope, cfg.max_model_len)
        self.attn = Attention(self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads, head_dim,
                              cfg.sliding_window if sliding else None, scale=1.0)
        if owner is not None:
            self.attn.share_kv_of(owner.attn)
        # An image's tokens attend to one another both ways in the sliding layers only.
        self.attn.causal_only = not sliding
        self.head_dim = head_dim

    def forward(self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata,
                shared: SharedKV) -> torch.Tensor:
        t = x.shape[0]
        qkv = self.qkv_proj(x)
        q = self.q_norm(qkv[:, : self.q_size].reshape(t, -1, self.head_dim))
        if self.shares:
            k, v = shared[self.kind]
            q, _ = self.rotary_emb(positions, q, k)
        else:
            k = qkv[:, self.q_size : self.q_size + self.kv_size].reshape(t, -1, self.head_dim)
            v = qkv[:, self.q_size + self.kv_size :].reshape(t, -1, self.head_dim) if self.values else k
            v = ops.rms_norm(v, self.v_norm_weight, self.eps, False)
            q, k = self.rotary_emb(positions, q, self.k_norm(k))
            shared[self.kind] = k, v
        out = self.attn(q.reshape(t, -1), k.reshape(t, -1), v.reshape(t, -1), meta)
        return self.o_proj(out)


class Gemma4Router(nn.Module):
    """Top-k experts of a token: its RMS-normalized state, scaled per channel (`scale`) and by
    1/sqrt(hidden), through `proj`; softmax, the k best renormalized, each times its expert's scale."""

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, eps: float) -> None:
        super().__init__()
        self.proj = ReplicatedLinear(hidden_size, num_experts)
        self.scale = nn.Parameter(torch.empty(hidden_size), requires_grad=False)
        self.per_expert_scale = nn.Parameter(torch.empty(num_experts), requires_grad=False)
        self.register_buffer("norm_weight", torch.ones(hidden_size, dtype=torch.float32), persistent=False)
        self.top_k, self.eps, self.root = top_k, eps, hidden_size**-0.5

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = ops.rms_norm(x, self.norm_weight, self.eps, False) * self.scale * self.root
        probs = torch.softmax(self.proj(h), dim=-1, dtype=torch.float32)
        weights, ids = probs.topk(self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights * self.per_expert_scale[ids], ids


class Gemma4DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, plan: LayerPlan, owner: Gemma4Attention | None) -> None:
        super().__init__()
        hf, hidden, eps = cfg.hf_config, cfg.hidden_size, cfg.rms_norm_eps
        self.self_attn = Gemma4Attention(cfg, plan, owner)
        wide = 2 if hf.get("use_double_wide_mlp") and plan.owner is not None else 1
        self.mlp = DecoderMLP(hidden, cfg.intermediate_size * wide, act=GeluAndMul)
        for name in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm"):
            setattr(self, name, Fp32RMSNorm(hidden, eps))
        self.layer_scalar = nn.Parameter(torch.ones(1), requires_grad=False)
        self.moe = bool(hf.get("enable_moe_block"))
        if self.moe:
            moe = cfg.moe
            if moe is None:
                raise ValueError("enable_moe_block needs num_experts and top_k_experts")
            self.router = Gemma4Router(hidden, moe.num_experts, moe.top_k, eps)
            self.experts = FusedMoE(moe.num_experts, hidden, moe.intermediate_size, activation="gelu_tanh")
            for name in ("post_feedforward_layernorm_1", "post_feedforward_layernorm_2", "pre_feedforward_layernorm_2"):
                setattr(self, name, Fp32RMSNorm(hidden, eps))
        per_layer = int(hf.get("hidden_size_per_layer_input") or 0)
        if per_layer:
            self.per_layer_input_gate = ReplicatedProjection(hidden, per_layer)
            self.per_layer_projection = ReplicatedProjection(per_layer, hidden)
            self.post_per_layer_input_norm = Fp32RMSNorm(hidden, eps)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata, shared: SharedKV,
                per_layer_input: torch.Tensor | None) -> torch.Tensor:
        """The residual stream in and out (adds in the model dtype, in transformers' order)."""
        attended = self.self_attn(positions, self.input_layernorm(x), meta, shared)
        x = x + self.post_attention_layernorm(attended)
        h = self.mlp(self.pre_feedforward_layernorm(x))
        if self.moe:
            weights, ids = self.router(x)
            routed = all_reduce(self.experts(self.pre_feedforward_layernorm_2(x), weights, ids))
            h = self.post_feedforward_layernorm_1(h) + self.post_feedforward_layernorm_2(routed)
        x = x + self.post_feedforward_layernorm(h)
        if per_layer_input is not None:
            gate = nn.functional.gelu(self.per_layer_input_gate(x), approximate="tanh") * per_layer_input
            x = x + self.post_per_layer_input_norm(self.per_layer_projection(gate))
        return x * self.layer_scalar


def _scaled(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x times `scale` rounded to x's dtype first, as transformers' scaled embeddings apply it."""
    return x * torch.tensor(scale, dtype=x.dtype)


class Gemma4Model(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hf = cfg.hf_config
        self.hidden_size = cfg.hidden_size
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size)
        plans = layer_plans(cfg)
        layers: list[Gemma4DecoderLayer] = []
        for plan in plans:
            owner = layers[plan.owner].self_attn if plan.owner is not None else None
            layers.append(Gemma4DecoderLayer(cfg, plan, owner))
        self.layers = nn.ModuleList(layers)
        # The first layer that reads another's K/V (None: every layer keeps its own).
        self.first_sharing = next((i for i, plan in enumerate(plans) if plan.owner is not None), None)
        self.norm = Fp32RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.per_layer = int(hf.get("hidden_size_per_layer_input") or 0)
        if self.per_layer:
            self.per_layer_vocab = int(hf.get("vocab_size_per_layer_input") or cfg.vocab_size)
            self.pad_token_id = int(hf.get("pad_token_id") or 0)
            width = cfg.num_layers * self.per_layer
            self.embed_tokens_per_layer = VocabParallelEmbedding(self.per_layer_vocab, width)
            self.per_layer_model_projection = ReplicatedProjection(cfg.hidden_size, width)
            self.per_layer_projection_norm = Fp32RMSNorm(self.per_layer, cfg.rms_norm_eps)

    def per_layer_inputs(self, input_ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """[tokens, layers, per_layer]: each token's own vector per layer (ids past the per-layer
        vocabulary, and images' tokens, take the padding token's) mixed with a normalized projection of
        its embedding (an image token's: its feature)."""
        t, layers = x.shape[0], len(self.layers)
        ids = torch.where(input_ids < self.per_layer_vocab, input_ids, self.pad_token_id)
        own = _scaled(self.embed_tokens_per_layer(ids), self.per_layer**0.5).view(t, layers, self.per_layer)
        projected = self.per_layer_model_projection(x) * self.hidden_size**-0.5
        projected = self.per_layer_projection_norm(projected.view(t, layers, self.per_layer))
        return (projected + own) * 2**-0.5

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                image_embeds: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """`image_embeds` (rows, features): image features in place of those rows' (scaled) embeddings."""
        x = _scaled(self.embed_tokens(input_ids), self.hidden_size**0.5)
        if image_embeds is not None:
            rows, features = image_embeds
            x = x.index_copy(0, rows, features.to(x.dtype))
            if self.per_layer:
                input_ids = input_ids.index_fill(0, rows, self.pad_token_id)
        per_layer = self.per_layer_inputs(input_ids, x) if self.per_layer else None
        shared: SharedKV = {}
        for i, layer in enumerate(self.layers):
            if i == self.first_sharing and (outputs := meta.output_queries()) is not None:
                # The layers from here write no K/V: only the rows the step reads (its logit rows) go on,
                # as transformers' generate does for the prompt (vLLM's kv_sharing_fast_prefill).
                meta, rows = outputs
                if not meta.num_seqs:
                    return self.norm(x[:0])
                x, positions = x[rows], positions[rows]
                per_layer = None if per_layer is None else per_layer[rows]
                shared = {kind: (k[rows], v[rows]) for kind, (k, v) in shared.items()}
            x = layer(positions, x, meta, shared, None if per_layer is None else per_layer[:, i])
        return self.norm(x)


class Gemma4ForCausalLM(Gemma3ForCausalLM):
    def build_decoder(self, cfg: ModelConfig, qkv_bias: bool) -> nn.Module:
        if cfg.hf_config.get("use_bidirectional_attention") == "all":
            raise ValueError("use_bidirectional_attention 'all' (Gemma 4 encoders) is not supported")
        return Gemma4Model(cfg)

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        """Experts stacked as transformers 5 stores them (`experts.gate_up_proj` [E, 2I, H], `experts.down_proj`)
        go whole into the fused experts; the rest as Llama's (q/k/v and gate/up into their fused projections)."""
        for theirs, ours, part in ((".experts.gate_up_proj", ".experts.w13", 0), (".experts.down_proj", ".experts.w2", 2)):
            if name.endswith(theirs):
                return name.removesuffix(theirs) + ours, (STACKED, part)
        return super().checkpoint_target(name)


class Gemma4ForConditionalGeneration(Gemma4ForCausalLM):
    """Gemma 4 as the hub ships it: the language model (`model.language_model.*`) with its vision tower
    and embedder (engine/models/gemma4_vision.py); the audio tower (E2B, E4B) is skipped at load, and so
    is the vision side of a checkpoint whose config has none."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        skipped = ["model.audio_tower.", "model.embed_audio."]
        v = cfg.vision
        if v is None:
            skipped += ["model.vision_tower.", "model.embed_vision."]
        else:
            self.vision_tower = Gemma4VisionTower(v)
            self.embed_vision = Gemma4MultimodalEmbedder(v.hidden_size, cfg.hidden_size, v.layer_norm_eps)
        self.ignored_checkpoint_prefixes = tuple(skipped)

    def encode_images(self, pixels: torch.Tensor, grids: torch.Tensor) -> list[torch.Tensor]:
        """Every image's patches (one after another, [patches, 3 * P * P]) and its (rows, columns) grid
        -> each image's features in the language model's space [rows * columns / k^2, hidden]."""
        features, start = [], 0
        for rows, columns in grids.tolist():
            patches = pixels[start : start + rows * columns]
            features.append(self.embed_vision(self.vision_tower.encode(patches, rows, columns)))
            start += rows * columns
        return features

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        name, image_side = multimodal_checkpoint_name(name.replace("model.embed_vision.", "embed_vision.", 1))
        return (name, None) if image_side or name.startswith("embed_vision.") else super().checkpoint_target(name)
