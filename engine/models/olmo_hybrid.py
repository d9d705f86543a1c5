"""OLMo Hybrid (`OlmoHybridForCausalLM`, AI2): Gated DeltaNet layers around OLMo 3's attention layers.

The attention layers (`layer_types` "full_attention") are OLMo 2's post-norm ones (q and k normalized
across all heads; rotary where `rope_parameters` names a base, else none at all: the released
checkpoints are NoPE). The linear-attention layers are pre-norm, their Gated DeltaNet stored as
separate q/k/v projections and convolutions (fused here into in_proj_qkv and conv1d), `g_proj` (the
output gate, z), `b_proj` and `a_proj`; hub checkpoints name the norms before attention and the MLP
`attention_layer_norm` and `feedforward_layer_norm`; with `linear_allow_neg_eigval` beta is 2 sigmoid(b), letting each update overshoot,
and the gated output norm uses eps 1e-5 (its kernel's default) whatever `rms_norm_eps` says.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from pagoda.engine.layers.gated_delta import GatedDeltaNet
from pagoda.engine.model_config import LinearAttentionConfig, ModelConfig
from pagoda.engine.models.llama import DecoderLayer, DecoderMLP, DecoderModel, LlamaForCausalLM
from pagoda.engine.models.olmo2 import Olmo2DecoderLayer

_KINDS = ("linear_attention", "full_attention")
# Checkpoint names of the linear attention's projections -> (our fused projection, its part); the rest renamed.
_PARTS = {".linear_attn.q_proj.": (".linear_attn.in_proj_qkv.", 0), ".linear_attn.k_proj.": (".linear_attn.in_proj_qkv.", 1),
          ".linear_attn.v_proj.": (".linear_attn.in_proj_qkv.", 2), ".linear_attn.g_proj.": (".linear_attn.in_proj_zba.", 0),
          ".linear_attn.b_proj.": (".linear_attn.in_proj_zba.", 1), ".linear_attn.a_proj.": (".linear_attn.in_proj_zba.", 2)}
_PARTS.update({f".linear_attn.{p}_conv1d.": (".linear_attn.conv1d.", i) for i, p in enumerate("qkv")})
_RENAMED = {".linear_attn.o_proj.": ".linear_attn.out_proj.", ".linear_attn.o_norm.": ".linear_attn.norm.",
            # Hub checkpoints' names of the layers' norms (transformers renames them as it loads).
            ".attention_layer_norm.": ".input_layernorm.", ".feedforward_layer_norm.": ".post_attention_layernorm."}


def _uses_rope(hf: dict[str, Any]) -> bool:
    """Whether the attention layers rotate: only where rope_parameters (or rope_theta) names a base."""
    params = hf.get("rope_parameters") or {}
    return (params.get("rope_theta") or hf.get("rope_theta")) is not None


class OlmoHybridForCausalLM(LlamaForCausalLM):
    def __init__(self, cfg: ModelConfig) -> None:
        kinds = list(cfg.hf_config.get("layer_types") or [])
        if len(kinds) != cfg.num_layers or any(k not in _KINDS for k in kinds):
            raise ValueError(f"layer_types must name {cfg.num_layers} layers, each one of {', '.join(_KINDS)}: {kinds}")
        self.kinds = kinds
        self.linear = dataclasses.replace(LinearAttentionConfig.from_hf(cfg.hf_config), norm_eps=1e-5)
        super().__init__(cfg)

    def build_decoder(self, cfg: ModelConfig, qkv_bias: bool) -> nn.Module:
        return DecoderModel(cfg, qkv_bias, False, self.make_mlp, make_layer=self._layer)

    def _layer(self, cfg: ModelConfig, layer: int) -> nn.Module:
        if self.kinds[layer] == "full_attention":
            return Olmo2DecoderLayer(cfg, layer, use_rope=_uses_rope(cfg.hf_config))
        beta_scale = 2.0 if cfg.hf_config.get("linear_allow_neg_eigval", True) else 1.0
        mixer = GatedDeltaNet(cfg.hidden_size, self.linear, beta_scale)
        return DecoderLayer(cfg, False, False, DecoderMLP(cfg.hidden_size, cfg.intermediate_size), attention=mixer)

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        """The linear layers' mixer is `linear_attn` in checkpoints, `self_attn` here (DecoderLayer's name)."""
        for theirs, (ours, part) in _PARTS.items():
            if theirs in name:
                return name.replace(theirs, ours).replace(".linear_attn.", ".self_attn."), part
        for theirs, ours in _RENAMED.items():
            name = name.replace(theirs, ours)
        return super().checkpoint_target(name.replace(".linear_attn.", ".self_attn."))
