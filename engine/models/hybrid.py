"""Hybrid decoders whose layers are Mamba-2 mixers or attention: IBM Granite 4.0-H (and Granite 4.0's
dense models, which share its architecture), IBM Bamba, NVIDIA Nemotron-H and TII Falcon-H1.

In Granite and Bamba a Mamba layer takes the place of attention inside an otherwise
ordinary decoder layer (norm, mixer, residual, norm, MLP, residual); Nemotron-H's
blocks each hold one mixer (Mamba-2, attention or an MLP) between a norm and the
residual; Falcon-H1's layers run Mamba-2 and attention side by side. The mixers keep per-sequence
states instead of KV
(engine/layers/mamba.py), and only the attention layers take blocks of the paged
KV cache.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagoda.engine.attention import AttentionMetadata
from pagoda.engine.distributed import all_reduce
from pagoda.engine.layers.linear import ColumnParallelLinear, ReplicatedLinear, RowParallelLinear
from pagoda.engine.layers.mamba import Mamba2Mixer
from pagoda.engine.layers.moe import FusedMoE, route
from pagoda.engine.layers.norm import RMSNorm
from pagoda.engine.model_config import ModelConfig, mamba_config
from pagoda.engine.models.llama import DecoderAttention, DecoderMLP, DecoderModel, LlamaForCausalLM
from pagoda.engine.models.moe import GraniteMoeForCausalLM, Router, SparseMoeBlock, _MixtureOfExperts

# config.json's names of a layer's kind: transformers 5's, and the hub's older ones.
_MAMBA_KINDS = ("linear_attention", "mamba")
_ATTENTION_KINDS = ("full_attention", "attention")


class MambaMixerLayer(Mamba2Mixer):
    """The mixer in a decoder layer's attention place (positions unused: the scan is ordered by itself)."""

    def forward(self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        return super().forward(x, meta)


def layer_kinds(cfg: ModelConfig, key: str = "layer_types") -> list[str]:
    """Each layer's kind, "mamba" or "attention", from the config's list."""
    kinds = cfg.hf_config.get(key) or []
    if len(kinds) != cfg.num_layers or any(k not in _MAMBA_KINDS + _ATTENTION_KINDS for k in kinds):
        raise ValueError(f"{key} must name {cfg.num_layers} layers, each one of "
                         f"{', '.join(_MAMBA_KINDS + _ATTENTION_KINDS)}: {kinds}")
    return ["mamba" if k in _MAMBA_KINDS else "attention" for k in kinds]


class GraniteMoeHybridForCausalLM(GraniteMoeForCausalLM):
    """Granite 4.0-H (Micro, Tiny, Small) and Granite 4.0's dense models: Granite's multipliers, layers
    of Mamba-2 or attention (without rotary where `position_embedding_type` is not "rope", as in every
    Granite 4.0), and after each a shared MLP, beside routed experts where the model has them."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.kinds = layer_kinds(cfg)
        self.mamba = mamba_config(cfg.hf_config)
        super().__init__(cfg)
        shared = ".mlp.shared_expert." if cfg.moe is not None else ".mlp."
        self._names = {".shared_mlp.input_linear.": f"{shared}gate_up_proj.",
                       ".shared_mlp.output_linear.": f"{shared}down_proj.", ".mamba.": ".self_attn."}

    @staticmethod
    def make_mlp(cfg: ModelConfig, layer: int) -> nn.Module:
        if cfg.moe is not None:
            return SparseMoeBlock(cfg)
        return DecoderMLP(cfg.hidden_size, int(cfg.hf_config["shared_intermediate_size"]))

    def layer_options(self, cfg: ModelConfig, layer: int) -> dict[str, Any]:
        if self.kinds[layer] == "mamba":
            return {"attention": MambaMixerLayer(cfg.hidden_size, self.mamba)}
        rope = cfg.hf_config.get("position_embedding_type") == "rope"
        return {"attention": DecoderAttention(cfg, cfg.attention_bias, False, use_rope=rope,
                                              scale=float(cfg.hf_config.get("attention_multiplier") or 1.0))}

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        for theirs, ours in self._names.items():
            name = name.replace(theirs, ours)
        return super().checkpoint_target(name)


class BambaForCausalLM(LlamaForCausalLM):
    """IBM Bamba-9B: Llama's layers (SwiGLU MLP `feed_forward`, rotary over part of each head) with Mamba-2
    in place of attention in every layer but `attn_layer_indices`."""

    _NAMES = {".mamba.": ".self_attn.", ".feed_forward.": ".mlp.", ".pre_ff_layernorm.": ".post_attention_layernorm.",
              "model.final_layernorm.": "model.norm."}

    def __init__(self, cfg: ModelConfig) -> None:
        attention = set(cfg.hf_config.get("attn_layer_indices") or ())
        self.kinds = ["attention" if i in attention else "mamba" for i in range(cfg.num_layers)]
        self.mamba = mamba_config(cfg.hf_config)
        super().__init__(cfg)

    def layer_options(self, cfg: ModelConfig, layer: int) -> dict[str, Any]:
        if self.kinds[layer] == "mamba":
            return {"attention": MambaMixerLayer(cfg.hidden_size, self.mamba)}
        return {"attention": DecoderAttention(cfg, cfg.attention_bias, False)}

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        for theirs, ours in self._NAMES.items():
            name = name.replace(theirs, ours)
        return super().checkpoint_target(name)


class ParallelHybridMixer(nn.Module):
    """Falcon-H1's mixers: Mamba-2 and attention side by side on the same normed input, summed."""

    def __init__(self, mamba: nn.Module, attention: nn.Module) -> None:
        super().__init__()
        self.mamba, self.attention = mamba, attention

    def forward(self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        return self.mamba(positions, x, meta) + self.attention(positions, x, meta)


class FalconH1ForCausalLM(LlamaForCausalLM):
    """TII Falcon-H1 (0.5B to 34B): every layer runs Mamba-2 and attention in parallel, then a SwiGLU MLP.
    Its muP multipliers (on the mixer's input and each part of its projection, on attention's input,
    keys and output, on the MLP's gate and output, on the LM head) are folded into the weights once
    loaded, so the forward pass is the plain one; the embedding multiplier is DecoderModel's."""

    _NAMES = ((".self_attn.", ".self_attn.attention."), (".mamba.", ".self_attn.mamba."), (".feed_forward.", ".mlp."),
              (".pre_ff_layernorm.", ".post_attention_layernorm."), ("model.final_layernorm.", "model.norm."))

    def __init__(self, cfg: ModelConfig) -> None:
        if cfg.quantization is not None or cfg.hf_config.get("mlp_bias"):
            raise ValueError("Falcon-H1 checkpoints that are quantized or have MLP biases are not supported")
        self.mamba = mamba_config(cfg.hf_config)
        super().__init__(cfg)

    def layer_options(self, cfg: ModelConfig, layer: int) -> dict[str, Any]:
        return {"attention": ParallelHybridMixer(MambaMixerLayer(cfg.hidden_size, self.mamba),
                                                 DecoderAttention(cfg, cfg.attention_bias, False))}

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        for theirs, ours in self._NAMES:
            name = name.replace(theirs, ours)
        return super().checkpoint_target(name)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden) * float(self.config.hf_config.get("lm_head_multiplier") or 1.0)

    @torch.no_grad()
    def finish_loading(self) -> None:
        """Scales each projection's rows (and biases, where the multiplier comes after them) by its multipliers."""
        hf = self.config.hf_config

        def multiplier(key: str) -> float:
            return float(hf.get(key) or 1.0)

        ssm = hf.get("ssm_multipliers") or [1.0] * 5
        gate, down = hf.get("mlp_multipliers") or (1.0, 1.0)
        for layer in self.model.layers:
            mamba, attention, mlp = layer.self_attn.mamba, layer.self_attn.attention, layer.mlp
            for part, scale in zip(mamba.in_proj.part_ids, ssm):
                _scale_rows(mamba.in_proj, part, float(scale) * multiplier("ssm_in_multiplier"), float(scale))
            _scale_rows(mamba.out_proj, None, multiplier("ssm_out_multiplier"))
            for part in ("q", "k", "v"):
                key = multiplier("key_multiplier") if part == "k" else 1.0
                _scale_rows(attention.qkv_proj, part, key * multiplier("attention_in_multiplier"), key)
            _scale_rows(attention.o_proj, None, multiplier("attention_out_multiplier"))
            _scale_rows(mlp.gate_up_proj, 0, float(gate))
            _scale_rows(mlp.down_proj, None, float(down))


def _scale_rows(linear: nn.Module, part: Any, weight: float, bias: float | None = None) -> None:
    """Multiplies a projection's rows of `part` (None: all of them) by `weight`, its bias by `bias`
    (default: `weight`)."""
    offset, size = linear.rows(part)[:2] if part is not None else (0, linear.weight.shape[0])
    linear.weight.data[offset : offset + size] *= weight
    if linear.bias is not None:
        linear.bias.data[offset : offset + size] *= weight if bias is None else bias


# Nemotron-H's hybrid_override_pattern letters (hub configs) and transformers 5's layers_block_type names.
_NEMOTRON_PATTERN = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}
_NEMOTRON_KINDS = {"linear_attention": "mamba", "full_attention": "attention", "mlp": "mlp", "moe": "moe"}


def nemotron_kinds(hf: dict[str, Any]) -> list[str]:
    """Each block's mixer: "mamba", "attention", "mlp" or "moe"."""
    if hf.get("layers_block_type"):
        names, table = hf["layers_block_type"], _NEMOTRON_KINDS
    else:
        names, table = list(hf.get("hybrid_override_pattern") or ""), _NEMOTRON_PATTERN
    if not names or any(n not in table for n in names):
        raise ValueError(f"Nemotron-H needs layers_block_type or hybrid_override_pattern naming each block "
                         f"({', '.join(table)}): {names}")
    return [table[n] for n in names]


class ReluSquaredMLP(nn.Module):
    """Nemotron-H's ungated MLP: down(relu(up(x))^2); with `reduce_results` off, this rank's partial sum."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool, reduce_results: bool = True) -> None:
        super().__init__()
        self.up_proj = ColumnParallelLinear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, bias=bias, reduce_results=reduce_results)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(torch.relu(self.up_proj(x)).square())


class NemotronHMoE(nn.Module):
    """Nemotron 3's mixture of experts: DeepSeek-V3's router (sigmoid scores steered by a correction bias,
    groups of experts, normalized and scaled weights), ungated squared-ReLU experts, a shared one beside
    them; where `moe_latent_size` says, the experts work in a smaller latent space between two
    projections."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hf = cfg.hf_config
        experts, bias = int(hf["n_routed_experts"]), bool(hf.get("mlp_bias"))
        self.top_k, self.renormalize = int(hf["num_experts_per_tok"]), bool(hf.get("norm_topk_prob", True))
        self.groups, self.topk_groups = int(hf.get("n_group") or 1), int(hf.get("topk_group") or 1)
        self.scaling = float(hf.get("routed_scaling_factor") or 1.0)
        latent = hf.get("moe_latent_size")
        if latent and bias:
            raise ValueError("latent MoE projections with biases are not supported")
        self.gate = Router(cfg.hidden_size, experts, score_bias=True, fp32=True)
        self.experts = FusedMoE(experts, int(latent or cfg.hidden_size), int(hf["moe_intermediate_size"]),
                                activation="relu2")
        self.shared_experts = ReluSquaredMLP(cfg.hidden_size, int(hf["moe_shared_expert_intermediate_size"]), bias,
                                             reduce_results=False)
        self.fc1_latent_proj = ReplicatedLinear(cfg.hidden_size, int(latent)) if latent else None
        self.fc2_latent_proj = ReplicatedLinear(int(latent), cfg.hidden_size) if latent else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, ids = route(self.gate(x), self.top_k, self.renormalize, scoring="sigmoid", num_groups=self.groups,
                             topk_groups=self.topk_groups, bias=self.gate.e_score_correction_bias,
                             scaling=self.scaling)
        if self.fc1_latent_proj is None:
            routed = self.experts(x, weights, ids)
        else:  # a linear map of this rank's partial sum: reduced with the rest
            routed = self.fc2_latent_proj(self.experts(self.fc1_latent_proj(x), weights, ids))
        return all_reduce(routed + self.shared_experts(x))


class NemotronHBlock(nn.Module):
    """norm, then the block's one mixer, whose output joins the residual stream."""

    def __init__(self, hidden_size: int, eps: float, mixer: nn.Module, positional: bool) -> None:
        super().__init__()
        self.norm = RMSNorm(hidden_size, eps)
        self.mixer = mixer
        self.positional = positional  # Mamba and attention take the step's positions and metadata; MLPs do not

    def forward(self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None,
                meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        x, residual = self.norm.with_residual(x, residual)
        return (self.mixer(positions, x, meta) if self.positional else self.mixer(x)), residual


class NemotronHForCausalLM(_MixtureOfExperts, LlamaForCausalLM):
    """NVIDIA Nemotron-H (8B, 47B, 56B), Nemotron Nano 9B/12B v2 and Nemotron 3 (Nano 30B-A3B): blocks of
    Mamba-2 (most), attention without rotary (a few), ungated squared-ReLU MLPs or mixtures of such
    experts, as `hybrid_override_pattern` lays them out. Checkpoints name the decoder `backbone`, its
    embeddings `embeddings` and final norm `norm_f`; MTP layers are skipped."""

    ignored_checkpoint_prefixes: tuple[str, ...] = ("mtp.",)

    # Only attention's q/k/v are fused here: the MLP's up_proj stands alone (no gate).
    packed_modules = {name: target for name, target in LlamaForCausalLM.packed_modules.items()
                      if target[0] == "qkv_proj"}

    def __init__(self, cfg: ModelConfig) -> None:
        self.kinds = self.block_kinds(cfg)
        self.mamba = mamba_config(cfg.hf_config)
        self.eps = float(cfg.hf_config.get("layer_norm_epsilon") or 1e-5)
        super().__init__(cfg)

    @staticmethod
    def block_kinds(cfg: ModelConfig) -> list[str]:
        return nemotron_kinds(cfg.hf_config)

    def build_decoder(self, cfg: ModelConfig, qkv_bias: bool) -> nn.Module:
        model = DecoderModel(cfg, qkv_bias, False, self.make_mlp, make_layer=self._block)
        model.norm = RMSNorm(cfg.hidden_size, self.eps)
        return model

    def _block(self, cfg: ModelConfig, layer: int) -> nn.Module:
        kind = self.kinds[layer]
        if kind == "mamba":
            mixer: nn.Module = MambaMixerLayer(cfg.hidden_size, self.mamba)
        elif kind == "attention":
            mixer = DecoderAttention(cfg, cfg.attention_bias, False, use_rope=False)
        elif kind == "moe":
            mixer = NemotronHMoE(cfg)
        else:
            mixer = ReluSquaredMLP(cfg.hidden_size, cfg.intermediate_size, bool(cfg.hf_config.get("mlp_bias")))
        return NemotronHBlock(cfg.hidden_size, self.eps, mixer, positional=kind in ("mamba", "attention"))

    def checkpoint_target(self, name: str) -> tuple[str, Any]:
        if name.startswith("backbone."):
            name = "model." + name.removeprefix("backbone.")
        name = name.replace("model.embeddings.", "model.embed_tokens.").replace("model.norm_f.", "model.norm.")
        return super().checkpoint_target(name)


class Mamba2ForCausalLM(NemotronHForCausalLM):
    """Mamba-2 (mamba2-130m to 2.7b, Mamba-Codestral-7B): Nemotron-H's block structure with a Mamba-2
    mixer in every block and no attention, so no KV cache at all."""

    @staticmethod
    def block_kinds(cfg: ModelConfig) -> list[str]:
        return ["mamba"] * cfg.num_layers
