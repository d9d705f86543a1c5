"""StarCoder2 (`Starcoder2ForCausalLM`: bigcode/starcoder2-3b, 7b, 15b).

Llama's layer order with GPT-style parts: LayerNorms with biases, biases on every projection, a
plain (ungated) MLP, c_fc then tanh GELU then c_proj, and a sliding window on every layer (so the
KV cache keeps only the window's blocks: one sliding group).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagoda.engine.layers.linear import ColumnParallelLinear, RowParallelLinear
from pagoda.engine.layers.norm import LayerNorm
from pagoda.engine.model_config import ModelConfig
from pagoda.engine.models.llama import DecoderModel, LlamaForCausalLM


class Starcoder2MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, bias: bool) -> None:
        super().__init__()
        self.c_fc = ColumnParallelLinear(cfg.hidden_size, cfg.intermediate_size, bias=bias)
        self.c_proj = RowParallelLinear(cfg.intermediate_size, cfg.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(nn.functional.gelu(self.c_fc(x), approximate="tanh"))


class Starcoder2ForCausalLM(LlamaForCausalLM):
    def build_decoder(self, cfg: ModelConfig, qkv_bias: bool) -> nn.Module:
        bias, eps = self._bias_and_eps(cfg)
        model = DecoderModel(cfg, bias, False, self.make_mlp, layer_options=self.layer_options)
        model.norm = LayerNorm(cfg.hidden_size, eps)
        return model

    @staticmethod
    def _bias_and_eps(cfg: ModelConfig) -> tuple[bool, float]:
        return bool(cfg.hf_config.get("use_bias", True)), float(cfg.hf_config.get("norm_epsilon", 1e-5))

    def make_mlp(self, cfg: ModelConfig, layer: int) -> nn.Module:  # type: ignore[override]
        return Starcoder2MLP(cfg, self._bias_and_eps(cfg)[0])

    def layer_options(self, cfg: ModelConfig, layer: int) -> dict[str, Any]:
        bias, eps = self._bias_and_eps(cfg)
        return {"norm": LayerNorm, "eps": eps, "o_bias": bias}
