"""DeepSeek V2 and V3 (`DeepseekV2ForCausalLM`: DeepSeek-V2, V2-Lite, V2.5, Coder-V2;
`DeepseekV3ForCausalLM`: DeepSeek-V3, R1, V3.1, Kimi K2): multi-head latent attention (MLA) and
fine-grained experts behind a grouped router.

MLA compresses each token's keys and values into one latent c (kv_lora_rank wide, 512 in V3) plus
one rotary key k_pe (64) shared by every head; head h's key is [W_UK_h c ; k_pe] and its value
W_UV_h c. The cache holds only [c ; k_pe], 576 numbers per token and layer where plain attention
over V3's 128 heads would hold 128 * (192 + 128) = 40960. Attention runs on the latent itself
("absorbed" MLA, as vLLM and the DeepSeek papers do for decode): q_h . k_h = (W_UK_h^T q_nope_h) . c
+ q_pe_h . k_pe, so each head's query is absorbed into latent space, every head reads the same
cached latent (multi-query attention with one 576-wide KV head), and the attention-weighted sum
of the latents is taken out of latent space by W_UV_h afterwards. The value of that one KV head is
the key itself (its first kv_lora_rank numbers are c), so the cache keeps a single plane and the
same paged-attention backends and kernels serve it unchanged.

kv_b_proj (W_UK and W_UV stacked) is read whatever format the checkpoint stores it in (FP8
blocks, integers) by applying it to the identity once loaded, then held as the two per-head
matrices. Under tensor parallelism the heads split across ranks and every rank caches the latent.
"""

from __future__ import annotations

from typing import Any
import torch
from torch import nn

from pagoda.engine.attention import AttentionMetadata
from pagoda.engine.distributed import tp_size
from pagoda.engine.layers.attention import Attention
from pagoda.engine.layers.linear import ColumnParallelLinear, ReplicatedProjection, RowParallelLinear, divide
from pagoda.engine.layers.norm import RMSNorm
from pagoda.engine.layers.rotary import RotaryEmbedding, yarn_mscale
from pagoda.engine.model_config import MLAConfig, ModelConfig, RopeConfig
from pagoda.engine.models.llama import LlamaForCausalLM
from pagoda.engine.models.moe import _MixtureOfExperts, mtp_layer_prefixes

# The latent and query bottleneck norms' epsilon: DeepSeek's reference builds them with its default.
_LATENT_NORM_EPS = 1e-6


def mla_softmax_scale(mla: MLAConfig, rope: RopeConfig) -> float:
    """1/sqrt(qk head dim), times YaRN's mscale(factor, mscale_all_dim) squared where the rope scaling
    sets mscale_all_dim (DeepSeek's long-context checkpoints): the logit temperature the model was trained with."""
    scale = (mla.qk_nope_head_dim + mla.qk_rope_head_dim) ** -0.5
    m_all = float(rope.scaling.get("mscale_all_dim") or 0.0)
    if rope.scaling_type != "default" and m_all:
        scale *= yarn_mscale(float(rope.scaling.get("factor", 1.0)), m_all) ** 2
    return scale


class MLAAttention(nn.Module):
    """Multi-head latent attention over a cache of latents (see the module docstring)."""

    def __init__(self, cfg: ModelConfig, rotary_interleaved: bool, use_rope: bool = True) -> None:
        super().__init__()
        mla = cfg.mla
        assert mla is not None
        self.num_heads = divide(cfg.num_heads, tp_size(), "attention heads")
        self.nope_dim, self.rope_dim, self.rank, self.v_dim = (mla.qk_nope_head_dim, mla.qk_rope_head_dim,
                                                               mla.kv_lora_rank, mla.v_head_dim)
        qk_dim = self.nope_dim + self.rope_dim
        self.q_lora = bool(mla.q_lora_rank)
        if self.q_lora:
            self.q_a_proj = ReplicatedProjection(cfg.hidden_size, mla.q_lora_rank, bias=cfg.attention_bias)
            self.q_a_layernorm = RMSNorm(mla.q_lora_rank, _LATENT_NORM_EPS)
            self.q_b_proj = ColumnParallelLinear(mla.q_lora_rank, cfg.num_heads * qk_dim)
        else:
            self.q_proj = ColumnParallelLinear(cfg.hidden_size, cfg.num_heads * qk_dim)
        self.kv_a_proj_with_mqa = ReplicatedProjection(cfg.hidden_size, mla.latent_dim, bias=cfg.attention_bias)
        self.kv_a_layernorm = RMSNorm(self.rank, _LATENT_NORM_EPS)
        self.kv_b_proj = ColumnParallelLinear(self.rank, cfg.num_heads * (self.nope_dim + self.v_dim))
        self.o_proj = RowParallelLinear(cfg.num_heads * self.v_dim, cfg.hidden_size, bias=cfg.attention_bias)
        # None: Kimi Linear's latent attention, whose shared key part is not rotated (positions come from its
        # linear-attention layers).
        self.rotary_emb = RotaryEmbedding(self.rope_dim, cfg.max_position_embeddings, cfg.rope, cfg.max_model_len,
                                          rotary_interleaved) if use_rope else None
        self.attn = Attention(self.num_heads, 1, mla.latent_dim, scale=mla_softmax_scale(mla, cfg.rope))
        # Per head: W_UK [heads, nope, rank] and W_UV^T [heads, rank, v], from kv_b_proj once it is loaded.
        self.register_buffer("w_uk", None, persistent=False)
        self.register_buffer("w_uv", None, persistent=False)

    def finish_loading(self) -> None:
        """Splits the loaded kv_b_proj into the per-head W_UK and W_UV the absorbed attention uses; applying
        the layer to the identity reads its weight in whatever format it is stored (FP8, integers)."""
        eye = torch.eye(self.rank, dtype=self.kv_a_layernorm.weight.dtype, device=self.kv_a_layernorm.weight.device)
        with torch.inference_mode():
            w = self.kv_b_proj(eye).t().reshape(self.num_heads, self.nope_dim + self.v_dim, self.rank)
        self.w_uk = w[:, : self.nope_dim].contiguous()
        self.w_uv = w[:, self.nope_dim :].transpose(1, 2).contiguous()
        del self.kv_b_proj

    def forward(self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        t = x.shape[0]
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))) if self.q_lora else self.q_proj(x)
        q_nope, q_pe = q.view(t, self.num_heads, -1).split([self.nope_dim, self.rope_dim], dim=-1)
        latent, k_pe = self.kv_a_proj_with_mqa(x).split([self.rank, self.rope_dim], dim=-1)
        latent = self.kv_a_layernorm(latent.contiguous())
        k_pe = k_pe.reshape(t, 1, self.rope_dim)
        if self.rotary_emb is not None:
            q_pe, k_pe = self.rotary_emb(positions, q_pe.contiguous(), k_pe.contiguous())
        # Each head's query in latent space: [heads, T, nope] @ [heads, nope, rank].
        q_latent = torch.bmm(q_nope.transpose(0, 1), self.w_uk).transpose(0, 1)
        query = torch.cat([q_latent, q_pe], dim=-1).reshape(t, -1)
        key = torch.cat([latent, k_pe.view(t, self.rope_dim)], dim=-1)
        out = self.attn(query, key, key, meta).view(t, self.num_heads, -1)[..., : self.rank]
        # Out of latent space, per head: [heads, T, rank] @ [heads, rank, v].
        out = torch.bmm(out.transpose(0, 1), self.w_uv).transpose(0, 1)
        return self.o_proj(out.reshape(t, self.num_heads * self.v_dim))


class DeepseekV2ForCausalLM(_MixtureOfExperts, LlamaForCausalLM):
    """Llama's pre-norm layers with latent attention; the first `first_k_dense_replace` layers keep a
    dense MLP, the rest route to experts (plus always-on shared experts). V2 rotates q_pe and k_pe
    in interleaved pairs."""

    # Only the MLPs' gate and up are fused here; MLA's projections are loaded as they are stored.
    packed_modules = {"gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}

    def __init__(self, cfg: ModelConfig) -> None:
        if cfg.mla is None:
            raise ValueError(f"{cfg.architecture} needs kv_lora_rank and the other latent-attention settings")
        super().__init__(cfg)
        self.ignored_checkpoint_prefixes = mtp_layer_prefixes(cfg)

    def rotary_interleaved(self) -> bool:
        return True

    def layer_options(self, cfg: ModelConfig, layer: int) -> dict[str, Any]:
        return {"attention": MLAAttention(cfg, self.rotary_interleaved())}


class DeepseekV3ForCausalLM(DeepseekV2ForCausalLM):
    """V2's structure with V3's sigmoid router (groups ranked by their two best biased scores); its
    q_pe/k_pe layout is interleaved unless the config's rope_interleave says otherwise."""

    def rotary_interleaved(self) -> bool:
        return bool(self.config.hf_config.get("rope_interleave", True))
