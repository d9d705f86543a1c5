"""OpenAI's GPT-OSS (gpt-oss-20b, gpt-oss-120b): a mixture-of-experts decoder with attention sinks.

Llama's pre-norm layers, with:
- attention: q/k/v/o biases, sliding-window (128) and full layers alternating (`layer_types`),
  YaRN rotary in the neox layout, and a learned sink logit per head (`self_attn.sinks`): one more
  key in every softmax whose value is zero, so a head may attend to nothing;
- MLP: every layer routes each token to top_k of E experts by a biased router (softmax over the
  chosen logits); experts have biases on both GEMMs and a clamped SwiGLU, (clamp(up) + 1) *
  g * sigmoid(alpha g) with g = min(gate, limit).

transformers keeps the experts stacked and transposed, with gate and up interleaved along the
intermediate dimension (`experts.gate_up_proj` [E, H, 2I], columns gate0, up0, gate1, ...;
`experts.down_proj` [E, I, H]); they load into the fused kernel's layout (gate rows, then up
rows). OpenAI's own checkpoints store the experts in MXFP4 (see mxfp4.py).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from pagoda.engine.distributed import all_reduce
from pagoda.engine.layers.linear import ReplicatedLinear
from pagoda.engine.layers.moe import STACKED, FusedMoE, route
from pagoda.engine.layers.weights import read_full
from pagoda.engine.model_config import ModelConfig
from pagoda.engine.models.llama import LlamaForCausalLM
from pagoda.kernels.reference import ClampedSwiglu

# Every expert's tensors, stacked: experts.gate_up_proj / experts.down_proj and their `_bias`, or, in an
# MXFP4 checkpoint, their `.qweight` and `.scales` (as the format names them once read).
_EXPERTS = re.compile(r"^(?P<layer>.*\.mlp\.experts)\.(?P<part>gate_up_proj|down_proj)"
                      r"(?P<leaf>_bias|\.qweight|\.scales)?$")
_LEAVES = {None: "", "_bias": "_bias", ".qweight": "_qweight", ".scales": "_scales"}


def deinterleave(gate_up: torch.Tensor, dim: int) -> torch.Tensor:
    """gate and up alternating along `dim` -> the gates, then the ups."""
    pairs = gate_up.unflatten(dim, (-1, 2))
    pair_dim = dim + 1 if dim >= 0 else dim
    return torch.cat([pairs.select(pair_dim, 0), pairs.select(pair_dim, 1)], dim=dim)


class GptOssExperts(FusedMoE):
    """The fused experts, loaded from transformers' transposed, interleaved stacks or MXFP4's."""

    def _read_stack(self, src: Any, shard: tuple[int | str, int], dim: int) -> torch.Tensor:
        """This rank's experts of a stacked tensor, gate and up (alternating along `dim`) separated."""
        expert, part = shard
        if expert != STACKED:
            raise ValueError("GPT-OSS experts are stored stacked")
        local = read_full(self._local_stack(src))
        return deinterleave(local, dim) if part == 0 else local

    def weight_loader(self, param: nn.Parameter, src: Any, shard: tuple[int | str, int]) -> None:
        # The weights are [E, in, out] (gate and up alternating along out), the biases [E, out].
        local = self._read_stack(src, shard, -1)
        self.load_local_stack(param, local.transpose(1, 2) if local.dim() == 3 else local, shard[1])

    def _int_loader(self, param: nn.Parameter, src: Any, shard: tuple[int | str, int],
                    columns: tuple[int, int] | None) -> None:
        # MXFP4 words and scales are [E, out, words or groups] (gate and up alternating along out).
        self.load_local_stack(param, self._read_stack(src, shard, 1), shard[1], columns)


class GptOssMoeBlock(nn.Module):
    """Biased router (softmax over the top_k logits) and the experts; one all-reduce."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        moe = cfg.moe
        assert moe is not None
        self.top_k = moe.top_k
        hf = cfg.hf_config
        self.router = ReplicatedLinear(cfg.hidden_size, moe.num_experts, bias=True)
        clamped = ClampedSwiglu(float(hf.get("swiglu_alpha", 1.702)), float(hf.get("swiglu_limit", 7.0)))
        self.experts = GptOssExperts(moe.num_experts, cfg.hidden_size, moe.intermediate_size, bias=True,
                                     clamped=clamped)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, ids = route(self.router(x), self.top_k, renormalize=True)
        return all_reduce(self.experts(x, weights, ids))


class GptOssForCausalLM(LlamaForCausalLM):
    """GPT-OSS: see the module docstring."""

    @staticmethod
    def make_mlp(cfg: ModelConfig, layer: int) -> nn.Module:
        return GptOssMoeBlock(cfg)

    def layer_options(self, cfg: ModelConfig, layer: int) -> dict[str, Any]:
        return {"sinks": True}

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        if name.endswith(".self_attn.sinks"):
            return name.replace(".self_attn.sinks", ".self_attn.attn.sinks"), None
        if match := _EXPERTS.match(name):
            down = match["part"] == "down_proj"
            param = f"{'w2' if down else 'w13'}{_LEAVES[match['leaf']]}"
            return f"{match['layer']}.{param}", (STACKED, 2 if down else 0)
        return super().checkpoint_target(name)
