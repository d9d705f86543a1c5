"""The Llama decoder family: Llama 2/3/3.x, Mistral, Qwen2/2.5, Qwen3 and Phi-3/4.

They share one structure (pre-norm decoder, GQA attention with rotary
embeddings, SwiGLU MLP) and differ only in switches read from the config:
qkv bias (Qwen2), per-head q/k RMSNorm and an explicit head_dim (Qwen3),
rope scaling (Llama 3.1+), sliding window (Mistral v0.1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pagoda.engine.attention import AttentionMetadata
from pagoda.engine.layers.activation import SiluAndMul, XIeLU
from pagoda.engine.layers.attention import Attention
from pagoda.engine.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from pagoda.engine.layers.linear import (ColumnParallelLinear, MergedColumnParallelLinear, QKVParallelLinear,
                                        RowParallelLinear)
from pagoda.engine.layers.norm import RMSNorm, ShardedRMSNorm
from pagoda.engine.layers.rotary import RotaryEmbedding
from pagoda.engine.model_config import ModelConfig, RopeConfig, sliding_rope
from pagoda.kernels.reference import FUSED_LINEAR_ROWS, QKNorm


class DecoderAttention(nn.Module):
    """GQA attention with rotary embeddings (`rope`: the model's unless given), an optional
    sliding window, and a softmax `scale`, q/k `norm` and logit `softcap` that Gemma sets its own way;
    `sinks`: per-head attention sinks (GPT-OSS); `output_gate`: Qwen3.5's gated heads."""

    def __init__(
        self, cfg: ModelConfig, qkv_bias: bool, qk_norm: bool | str, *, rope: RopeConfig | None = None,
        sliding_window: int | None = None, scale: float | None = None, norm: type[RMSNorm] = RMSNorm,
        softcap: float = 0.0, rotary_interleaved: bool = False, o_bias: bool | None = None, use_rope: bool = True,
        sinks: bool = False, output_gate: bool = False, norm_after_rope: bool = False,
    ) -> None:
        super().__init__()
        self.norm_after_rope = norm_after_rope  # Hunyuan normalizes q and k once they are rotated
        # output_gate: each head's query is followed in q_proj by a gate, sigmoid(gate) scaling the head's output.
        self.output_gate = output_gate
        self.qkv_proj = QKVParallelLinear(cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, qkv_bias,
                                          query_width=2 if output_gate else 1)
        self.q_size = self.qkv_proj.num_heads * cfg.head_dim
        self.kv_size = self.qkv_proj.num_kv_heads * cfg.head_dim
        self.o_proj = RowParallelLinear(cfg.num_heads * cfg.head_dim, cfg.hidden_size,
                                        bias=cfg.attention_bias if o_bias is None else o_bias)
        # None: a NoPE layer (SmolLM3's every fourth), which sees positions only through the causal mask.
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, rope or cfg.rope, cfg.max_model_len,
                                          rotary_interleaved) if use_rope else None
        self.attn = Attention(self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads, cfg.head_dim, sliding_window, scale,
                              softcap, sinks)
        self.head_dim = cfg.head_dim
        # q/k norms: per head (Qwen3, Gemma 3), or across all heads of the projection (OLMo 2's "whole").
        self.qk_norm_whole = qk_norm == "whole"
        if self.qk_norm_whole:
            self.q_norm = ShardedRMSNorm(self.q_size, cfg.num_heads * cfg.head_dim, cfg.rms_norm_eps)
            self.k_norm = ShardedRMSNorm(self.kv_size, cfg.num_kv_heads * cfg.head_dim, cfg.rms_norm_eps)
        elif qk_norm:
            self.q_norm = norm(cfg.head_dim, cfg.rms_norm_eps)
            self.k_norm = norm(cfg.head_dim, cfg.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        return self.o_proj(self.attend(positions, self.qkv_proj(x), meta))

    def attend(self, positions: torch.Tensor, qkv: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Everything between the two projections: the qkv projection's output in, o_proj's input out."""
        t = qkv.shape[0]
        q, k, v = qkv.split([self.q_size * (1 + self.output_gate), self.kv_size, self.kv_size], dim=-1)
        if self.output_gate:
            q, gate = q.view(t, -1, 2 * self.head_dim).split(self.head_dim, dim=-1)
            q = q.reshape(t, -1)
        if self.qk_norm_whole:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.reshape(t, -1, self.head_dim)
        k = k.reshape(t, -1, self.head_dim)
        per_head = self.q_norm is not None and not self.qk_norm_whole
        # One op from projection to cache where it can do the norms (RMSNorms before the rotation).
        fused_norms = not per_head or (isinstance(self.q_norm, RMSNorm) and not self.norm_after_rope)
        if self.rotary_emb is not None and fused_norms and self.attn.stores_rotated:
            qk_norm = (QKNorm(self.q_norm.weight, self.k_norm.weight, self.q_norm.eps, self.q_norm.round_normed)
                       if per_head else None)
            q = self.attn.rotate_and_store(positions, q, k, v.view(t, -1, self.head_dim), self.rotary_emb, qk_norm, meta)
            out = self.attn(q.view(t, -1), None, None, meta)
        else:
            if per_head and not self.norm_after_rope:
                q, k = self.q_norm(q), self.k_norm(k)
            if self.rotary_emb is not None:
                q, k = self.rotary_emb(positions, q, k)
            if per_head and self.norm_after_rope:
                q, k = self.q_norm(q), self.k_norm(k)
            out = self.attn(q.reshape(t, -1), k.reshape(t, -1), v.contiguous(), meta)
        if self.output_gate:
            out = out * torch.sigmoid(gate.reshape(t, -1))
        return out


class DecoderMLP(nn.Module):
    """A gated MLP: down(act(gate(x)) * up(x)), SwiGLU unless `act` says otherwise (Gemma's GeGLU);
    with `reduce_results` off it returns this rank's partial sum."""

    def __init__(self, hidden_size: int, intermediate_size: int, reduce_results: bool = True,
                 act: type[nn.Module] = SiluAndMul) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(hidden_size, [intermediate_size] * 2)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, reduce_results=reduce_results)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


def layer_attention(cfg: ModelConfig, layer: int, kinds: list[str] | None = None) -> tuple[int | None, RopeConfig]:
    """A layer's sliding window and rotary settings: where config.json's `layer_types` (or `kinds`)
    names the sliding layers (Ministral, OLMo 3) only those slide, with their own rope if
    rope_parameters nests one; otherwise every layer has the model's window (None, or Mistral v0.1's)."""
    kinds = kinds or cfg.hf_config.get("layer_types")
    if not kinds:
        return cfg.sliding_window, cfg.rope
    if len(kinds) != cfg.num_layers or kinds[layer] not in ("sliding_attention", "full_attention"):
        raise ValueError(f"layer_types must name {cfg.num_layers} layers, each sliding_attention or "
                         f"full_attention: {kinds}")
    if kinds[layer] == "full_attention" or cfg.sliding_window is None:
        return None, cfg.rope
    return cfg.sliding_window, sliding_rope(cfg.hf_config) or cfg.rope


class DecoderLayer(nn.Module):
    """Pre-norm attention then MLP, each output scaled by `residual_multiplier` before it joins the
    residual stream (1 but in Granite), attention scaled by `attention_scale` (None: 1/sqrt(head_dim));
    StarCoder2's LayerNorms (`norm`, `eps`) and biased o_proj (`o_bias`) plug in here too, GPT-OSS's
    attention `sinks`, and another attention module altogether (`attention`: DeepSeek's latent attention, a Mamba mixer).

    Steps of at most `fused_rows` tokens (decodes of small batches) fold the norms, SiLU-and-mul and
    residual adds into the projections' GEMMs where the layer allows it (`folds_edges`): six launches
    per layer instead of nine, where each launch costs more than the bytes it moves."""

    # One row tile of ops.fused_linear; larger steps stream the weights better through cuBLAS. 0: never fold.
    fused_rows = FUSED_LINEAR_ROWS

    def __init__(self, cfg: ModelConfig, qkv_bias: bool, qk_norm: bool | str, mlp: nn.Module,
                 residual_multiplier: float = 1.0, attention_scale: float | None = None, *,
                 norm: Callable[[int, float], nn.Module] = RMSNorm, eps: float | None = None,
                 o_bias: bool | None = None, use_rope: bool = True, layer: int = 0,
                 rotary_interleaved: bool = False, attention: nn.Module | None = None, sinks: bool = False,
                 norm_after_rope: bool = False) -> None:
        super().__init__()
        if attention is None:
            window, rope = layer_attention(cfg, layer)
            attention = DecoderAttention(cfg, qkv_bias, qk_norm, rope=rope, sliding_window=window, scale=attention_scale,
                                         o_bias=o_bias, use_rope=use_rope, rotary_interleaved=rotary_interleaved,
                                         sinks=sinks, norm_after_rope=norm_after_rope)
        self.self_attn = attention
        self.mlp = mlp
        self.residual_multiplier = residual_multiplier
        eps = cfg.rms_norm_eps if eps is None else eps
        self.input_layernorm = norm(cfg.hidden_size, eps)
        self.post_attention_layernorm = norm(cfg.hidden_size, eps)

    def folds_edges(self, tokens: int) -> bool:
        """Whether a step of `tokens` runs `forward_folded`: few enough rows, an RMSNorm'd SwiGLU layer
        without multipliers, and four projections that each take their neighbours into their GEMM."""
        attn, mlp = self.self_attn, self.mlp
        return (tokens <= self.fused_rows and self.residual_multiplier == 1.0
                and isinstance(attn, DecoderAttention) and isinstance(mlp, DecoderMLP) and type(mlp.act) is SiluAndMul
                and isinstance(self.input_layernorm, RMSNorm) and isinstance(self.post_attention_layernorm, RMSNorm)
                and attn.qkv_proj.fuses_edges and attn.o_proj.fuses_edges
                and mlp.gate_up_proj.fuses_edges and mlp.down_proj.fuses_edges)

    def forward_folded(
        self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None, meta: AttentionMetadata
    ) -> tuple[torch.Tensor, None]:
        """`forward` in four fused GEMMs, the attention between them; the residual stream leaves whole
        (residual None), so the next layer's norm has nothing to add."""
        h = x if residual is None else x + residual
        attn, mlp = self.self_attn, self.mlp
        qkv = attn.qkv_proj.normed(h, self.input_layernorm.row_norm())
        h = attn.o_proj.added_to(attn.attend(positions, qkv, meta), h)
        gate_up = mlp.gate_up_proj.normed(h, self.post_attention_layernorm.row_norm())
        return mlp.down_proj.added_to(gate_up, h, gated=True), None

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None, meta: AttentionMetadata
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x is the previous layer's output, not yet added to the residual stream (None: x is the whole stream)."""
        if self.folds_edges(x.shape[0]):
            return self.forward_folded(positions, x, residual, meta)
        x, residual = self.input_layernorm.with_residual(x, residual)
        x = self.self_attn(positions, x, meta)
        if self.residual_multiplier != 1.0:
            x = x * self.residual_multiplier
        x, residual = self.post_attention_layernorm(x, residual)
        x = self.mlp(x)
        return (x if self.residual_multiplier == 1.0 else x * self.residual_multiplier), residual


class DecoderModel(nn.Module):
    """Embeddings, decoder layers (DecoderLayer with each layer's `layer_options`, or what `make_layer`
    builds for a family with other layers), final norm."""

    def __init__(
        self, cfg: ModelConfig, qkv_bias: bool, qk_norm: bool | str, make_mlp: Callable[[ModelConfig, int], nn.Module],
        make_layer: Callable[[ModelConfig, int], nn.Module] | None = None,
        layer_options: Callable[[ModelConfig, int], dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        # Granite's multipliers (its configs name them; 1 and 1/sqrt(head_dim) everywhere else).
        hf = cfg.hf_config
        self.embedding_multiplier = float(hf.get("embedding_multiplier", 1.0))
        residual, attention = float(hf.get("residual_multiplier", 1.0)), hf.get("attention_multiplier")
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            make_layer(cfg, i) if make_layer is not None else
            DecoderLayer(cfg, qkv_bias, qk_norm, make_mlp(cfg, i), residual, None if attention is None else float(attention),
                         layer=i, **(layer_options(cfg, i) if layer_options is not None else {}))
            for i in range(cfg.num_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                image_embeds: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """`image_embeds` (rows, features): inputs that are image features in place of the token embeddings.
        Features wider than the model (Qwen3-VL's DeepStack) hold one more slice per early layer, added to
        those rows' hidden states after that layer."""
        x, residual = self.embed_tokens(input_ids), None
        if self.embedding_multiplier != 1.0:
            x = x * self.embedding_multiplier
        stacked: list[torch.Tensor] = []
        if image_embeds is not None:
            rows, features = image_embeds
            first, *stacked = features.to(x.dtype).split(x.shape[-1], dim=1)
            x = x.index_copy(0, rows, first)
        for i, layer in enumerate(self.layers):
            x, residual = layer(positions, x, residual, meta)
            if i < len(stacked):  # the layer's output is x + residual: adding to x adds to it
                x = x.index_add(0, rows, stacked[i])
        x, _ = self.norm.with_residual(x, residual)
        return x


class LlamaForCausalLM(nn.Module):
    """Also serves Mistral; subclasses switch on Qwen's differences."""

    qkv_bias = False
    qk_norm: bool | str = False  # True: per head; "whole": across all heads (OLMo 2, OLMoE)
    # Whether it has an LM head (generation); decoder-only checkpoints serve embeddings only.
    generates = True
    # What checkpoint tensor names lack before ours ("model." for decoder-only checkpoints).
    checkpoint_prefix = ""
    # Checkpoint names of separately stored projections -> (our fused parameter, shard id).
    packed_modules = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        bias = self.qkv_bias or cfg.attention_bias
        self.model = self.build_decoder(cfg, bias)
        self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size) if self.generates else None
        if cfg.tie_word_embeddings and self.lm_head is not None:
            self.lm_head.weight = self.model.embed_tokens.weight

    def build_decoder(self, cfg: ModelConfig, qkv_bias: bool) -> nn.Module:
        """The decoder stack (embeddings, layers, final norm); families with other layers replace it."""
        return DecoderModel(cfg, qkv_bias, self.qk_norm, self.make_mlp, layer_options=self.layer_options)

    def layer_options(self, cfg: ModelConfig, layer: int) -> dict[str, Any]:
        """DecoderLayer's keyword options for one layer: where a family's layers differ from Llama's."""
        return {}

    @staticmethod
    def make_mlp(cfg: ModelConfig, layer: int) -> nn.Module:
        """The MLP of decoder layer `layer` (mixture-of-experts models route some or all layers)."""
        return DecoderMLP(cfg.hidden_size, cfg.intermediate_size)

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        """(our parameter, shard id) for a checkpoint tensor: separately stored projections go
        to their fused parameter (q_proj -> qkv_proj, part "q"), everything else to its namesake."""
        for ckpt_name, (ours, shard_id) in self.packed_modules.items():
            if f".{ckpt_name}." in name:
                return name.replace(ckpt_name, ours), shard_id
        return name, None

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                image_embeds: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Hidden states of every new token; logits are computed only where needed."""
        if image_embeds is None:
            return self.model(input_ids, positions, meta)
        return self.model(input_ids, positions, meta, image_embeds)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)


class Qwen2ForCausalLM(LlamaForCausalLM):
    qkv_bias = True


class Qwen3ForCausalLM(LlamaForCausalLM):
    qk_norm = True


class Phi3ForCausalLM(LlamaForCausalLM):
    """Phi-3 and Phi-4 (mini): Llama's structure with q/k/v and gate/up stored fused in the checkpoint
    (the fused layers' loaders split them), partial rotary and LongRoPE, both read from the config."""


class SmolLM3ForCausalLM(LlamaForCausalLM):
    """SmolLM3: Llama with rotary off in the layers `no_rope_layers` marks 0 (every fourth)."""

    def layer_options(self, cfg: ModelConfig, layer: int) -> dict[str, Any]:
        interval = int(cfg.hf_config.get("no_rope_layer_interval") or 4)
        uses_rope = cfg.hf_config.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(cfg.num_layers)]
        if len(uses_rope) != cfg.num_layers:
            raise ValueError(f"no_rope_layers must name {cfg.num_layers} layers, got {len(uses_rope)}")
        return {"use_rope": bool(uses_rope[layer])}


class SeedOssForCausalLM(LlamaForCausalLM):
    """ByteDance Seed-OSS: Llama with q/k/v biases (`attention_bias`) and the o_proj's set apart
    (`attention_out_bias`)."""

    def layer_options(self, cfg: ModelConfig, layer: int) -> dict[str, Any]:
        return {"o_bias": bool(cfg.hf_config.get("attention_out_bias", False))}


class Ernie45ForCausalLM(LlamaForCausalLM):
    """Baidu ERNIE 4.5 (dense): Llama with rotary in the interleaved (gpt-j) layout."""

    def layer_options(self, cfg: ModelConfig, layer: int) -> dict[str, Any]:
        if cfg.hf_config.get("use_bias"):
            raise ValueError("ERNIE 4.5 checkpoints with use_bias are not supported")
        return {"rotary_interleaved": True}


class HunYuanDenseV1ForCausalLM(LlamaForCausalLM):
    """Tencent Hunyuan (dense: Hunyuan-0.5B to 7B): Llama with per-head q/k norms applied after the rotation
    (`query_layernorm`, `key_layernorm`) and NTK-alpha rotary (rope type "dynamic" with a fixed `alpha`)."""

    qk_norm = True

    def layer_options(self, cfg: ModelConfig, layer: int) -> dict[str, Any]:
        return {"norm_after_rope": True}

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        name = name.replace(".self_attn.query_layernorm.", ".self_attn.q_norm.")
        return super().checkpoint_target(name.replace(".self_attn.key_layernorm.", ".self_attn.k_norm."))


class ApertusMLP(nn.Module):
    """Apertus's ungated MLP: down(xielu(up(x)))."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.up_proj = ColumnParallelLinear(hidden_size, intermediate_size)
        self.act_fn = XIeLU()
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.up_proj(x)))


class ApertusForCausalLM(LlamaForCausalLM):
    """Swiss AI's Apertus (8B, 70B): Llama with per-head q/k norms, and an ungated xIELU MLP; its norms
    are named `attention_layernorm` and `feedforward_layernorm`."""

    qk_norm = True
    # Its MLP has no gate: up_proj is a projection of its own.
    packed_modules = {"q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v")}

    @staticmethod
    def make_mlp(cfg: ModelConfig, layer: int) -> nn.Module:
        if cfg.hf_config.get("hidden_act", "xielu") != "xielu":
            raise ValueError(f"Apertus with hidden_act {cfg.hf_config['hidden_act']!r} is not supported (supported: xielu)")
        return ApertusMLP(cfg.hidden_size, cfg.intermediate_size)

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        name = name.replace(".attention_layernorm.", ".input_layernorm.")
        return super().checkpoint_target(name.replace(".feedforward_layernorm.", ".post_attention_layernorm."))


class GraniteForCausalLM(LlamaForCausalLM):
    """IBM Granite 3.x: Llama's structure with the multipliers DecoderModel reads from the config,
    and logits divided by `logits_scaling`."""

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden) / float(self.config.hf_config.get("logits_scaling", 1.0))


class _DecoderOnly:
    """A checkpoint of the decoder alone (LlamaModel, Qwen3Model, ...), as embedding models
    ship: no LM head, tensors named without the `model.` prefix. It serves embeddings only."""

    generates = False
    checkpoint_prefix = "model."


class LlamaModel(_DecoderOnly, LlamaForCausalLM):
    pass


class Qwen2Model(_DecoderOnly, Qwen2ForCausalLM):
    pass


class Qwen3Model(_DecoderOnly, Qwen3ForCausalLM):
    pass
