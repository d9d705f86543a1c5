"""Kimi Linear (`KimiLinearForCausalLM`: Moonshot's Kimi-Linear-48B-A3B): three Kimi Delta Attention layers
(engine/layers/kimi_delta.py) to one of DeepSeek's latent attention without rotary (NoPE: its shared key
part is not rotated), and DeepSeek-V3's experts (a grouped sigmoid router with a correction bias and a
shared expert) in every MLP but the dense ones `mlp_layer_types` names.

Hub checkpoints keep the linear layers' parts under `self_attn` (q/k/v_proj, q/k/v_conv1d, f_a_proj,
f_b_proj, dt_bias, A_log, b_proj, g_a_proj, g_b_proj, o_norm, o_proj) and Mixtral's expert names
(block_sparse_moe.experts.N.w1/w2/w3); transformers' own save nests the decay gate's under `forget_gate`.
"""

from __future__ import annotations

import re
from typing import Any

from pagoda.engine.layers.kimi_delta import KimiDeltaAttention
from pagoda.engine.model_config import LinearAttentionConfig, ModelConfig
from pagoda.engine.models.deepseek import DeepseekV2ForCausalLM, MLAAttention

_KINDS = ("linear_attention", "full_attention")
_LAYER = re.compile(r"\.layers\.(\d+)\.self_attn\.")
# A linear layer's checkpoint names -> (ours, part of a fused parameter or None).
_LINEAR = {**{f"{p}_proj.": ("in_proj_qkv.", i) for i, p in enumerate("qkv")},
           **{f"{p}_conv1d.": ("conv1d.", i) for i, p in enumerate("qkv")},
           "o_norm.": ("norm.", None), "o_proj.": ("out_proj.", None), "forget_gate.": ("", None)}


class KimiLinearForCausalLM(DeepseekV2ForCausalLM):
    def __init__(self, cfg: ModelConfig) -> None:
        hf = cfg.hf_config
        kinds = list(hf.get("layer_types") or [])
        if len(kinds) != cfg.num_layers or any(k not in _KINDS for k in kinds):
            raise ValueError(f"layer_types must name {cfg.num_layers} layers, each one of {', '.join(_KINDS)}: {kinds}")
        self.kinds = kinds
        heads, head_dim = int(hf["linear_num_heads"]), int(hf["linear_head_dim"])
        self.linear = LinearAttentionConfig(num_key_heads=heads, num_value_heads=heads, key_head_dim=head_dim,
                                            value_head_dim=head_dim, conv_kernel=int(hf.get("linear_conv_kernel_dim") or 4),
                                            norm_eps=float(hf.get("rms_norm_eps", 1e-5)))
        super().__init__(cfg)

    def layer_options(self, cfg: ModelConfig, layer: int) -> dict[str, Any]:
        if self.kinds[layer] == "full_attention":
            return {"attention": MLAAttention(cfg, rotary_interleaved=False, use_rope=False)}
        return {"attention": KimiDeltaAttention(cfg.hidden_size, self.linear)}

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        match = _LAYER.search(name)
        if match and self.kinds[int(match[1])] == "linear_attention":
            head, _, leaf = name.partition(match[0])
            for theirs, (ours, part) in _LINEAR.items():
                if leaf.startswith(theirs):
                    return head + match[0] + ours + leaf[len(theirs):], part
            return name, None
        return super().checkpoint_target(name)
