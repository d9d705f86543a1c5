"""StarCoder2 (`Starcoder2ForCausalLM`: bigcode/starcoder2-3b, 7b, 15b).

Llama's layer order with GPT-style parts: LayerNorms with biases, biases on every projection, a
plain (ungated) MLP, c_fc then tanh GELU then c_proj, and a sliding window on every layer (so the
KV cache keeps only the window's blocks: one sliding group).
"""

from __future__ import annotations

import torch
from torch import nn

from pagoda.engine.layers.linear import ColumnParallelLinear, RowParallelLinear
from pagoda.engine.layers.norm import LayerNorm
from pagoda.engine.model_config import ModelConfig
from pagoda.engine.models.llama import DecoderLayer, DecoderModel, LlamaForCausalLM


class Starcoder2MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, bias: bool) -> None:
        super().__init__()
        self.c_fc = ColumnParallelLinear(cfg.hidden_size, cfg.intermediate_size, bias=bias)
        self.c_proj = RowParallelLinear(cfg.intermediate_size, cfg.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(nn.functional.gelu(self.c_fc(x), approximate="tanh"))


class Starcoder2ForCausalLM(LlamaForCausalLM):
    def build_decoder(self, cfg: ModelConfig, qkv_bias: bool) -> nn.Module:
        bias, eps = bool(cfg.hf_config.get("use_bias", True)), float(cfg.hf_config.get("norm_epsilon", 1e-5))
        model = DecoderModel(cfg, bias, False, self.make_mlp, make_layer=lambda cfg, i: DecoderLayer(
            cfg, bias, False, Starcoder2MLP(cfg, bias), norm=LayerNorm, eps=eps, o_bias=bias, layer=i))
        model.norm = LayerNorm(cfg.hidden_size, eps)
        return model
