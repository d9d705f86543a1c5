"""PyTorch reference implementations of every kernel the engine calls.

They define the semantics the Triton kernels must reproduce, run on any
device, and are what the engine uses on CPU. Numerics follow the Hugging Face
implementations of the supported families (norms in fp32, results cast back)
so that outputs agree token for token.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, round_normed: bool = True) -> torch.Tensor:
    """x / rms(x) * weight. `round_normed`: the normalized row is rounded to x's dtype before the weight
    multiplies it (Llama's order); off, the product is taken in fp32 and rounded once, in x's dtype
    (Gemma's and Qwen3.5's (1 + weight) norms, whose weight is then kept in fp32)."""
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype) if round_normed else (h * weight.float()).to(dtype)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, round_normed: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (rms_norm(x + residual), x + residual)."""
    residual = x + residual
    return rms_norm(residual, weight, eps, round_normed), residual


@dataclass(frozen=True)
class RowNorm:
    """An RMSNorm of a GEMM's input rows (rms_norm's weight, epsilon and rounding order)."""

    weight: torch.Tensor
    eps: float
    round_normed: bool = True


# The rows the Triton kernel of fused_linear holds in one pass over the weight (tl.dot's smallest row tile):
# the most a caller should send it, since each further tile of rows reads the whole weight again.
FUSED_LINEAR_ROWS = 16


def check_linear_edges(norm: RowNorm | None, gated: bool) -> None:
    """fused_linear's input goes through a norm (the residual stream) or the gated activation (gate_up's
    output), at most one of them."""
    if norm is not None and gated:
        raise ValueError("a fused linear takes a norm or the gated activation as its input, not both")


def fused_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, norm: RowNorm | None = None,
    gated: bool = False, residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """A linear layer with what surrounds it in a decoder layer: y = a @ W^T (+ bias) (+ residual), where
    a is rms_norm(x) with a `norm` (x: [.., K], the residual stream), silu(x[.., :K]) * x[.., K:] when
    `gated` (x: [.., 2K], the gate_up projection's output), else x. Rounded as the separate ops round."""
    check_linear_edges(norm, gated)
    if norm is not None:
        x = rms_norm(x, norm.weight, norm.eps, norm.round_normed)
    elif gated:
        x = silu_and_mul(x)
    y = F.linear(x, weight, bias)
    return y if residual is None else y + residual


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int, is_neox: bool) -> torch.Tensor:
    """Rotates pairs (x1, x2) of the first rotary_dim elements: (i, i + half) for neox, (2i, 2i + 1) for gpt-j."""
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    c, s = cos.to(x.dtype), sin.to(x.dtype)
    if is_neox:
        x1, x2 = rot.chunk(2, dim=-1)
        out = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)
    else:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        out = torch.stack([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).flatten(-2)
    return out if rest.numel() == 0 else torch.cat([out, rest], dim=-1)


def rotary_embedding(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    rotary_dim: int,
    is_neox: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding in the neox (rotate-half) or gpt-j (interleaved) layout.

    q: [T, Hq, D], k: [T, Hkv, D]; cos_sin_cache: [max_pos, rotary_dim], cos
    then sin; scaling rules (linear, llama3) live in how the table is built.
    """
    cos, sin = cos_sin_cache[positions].chunk(2, dim=-1)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return _rotate(q, cos, sin, rotary_dim, is_neox), _rotate(k, cos, sin, rotary_dim, is_neox)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    """GeGLU with the tanh approximation of GELU (Gemma's gelu_pytorch_tanh)."""
    d = x.shape[-1] // 2
    return F.gelu(x[..., :d], approximate="tanh") * x[..., d:]


@dataclass(frozen=True)
class ClampedSwiglu:
    """GPT-OSS's expert activation: the gate clamped from above and up on both sides at `limit`, then
    (up + 1) * gate * sigmoid(alpha * gate)."""

    alpha: float
    limit: float


def clamped_swiglu_and_mul(x: torch.Tensor, act: ClampedSwiglu) -> torch.Tensor:
    """x: [..., 2d], gate then up halves -> [..., d] (see ClampedSwiglu)."""
    d = x.shape[-1] // 2
    gate = x[..., :d].clamp(max=act.limit)
    up = x[..., d:].clamp(-act.limit, act.limit)
    return (up + 1) * (gate * torch.sigmoid(gate * act.alpha))


# Experts' activations: SwiGLU, GeGLU with tanh GELU (Gemma 4's), and ungated relu(up)^2 (Nemotron-H's).
EXPERT_ACTIVATIONS = ("silu", "gelu_tanh", "relu2")


def expert_activation(gate_up: torch.Tensor, clamped: ClampedSwiglu | None, activation: str) -> torch.Tensor:
    """An expert's activation of its first GEMM's output (see EXPERT_ACTIVATIONS; GPT-OSS's SwiGLU is
    `clamped`). Triton's fused_moe dispatches its own kernels by the same rule."""
    if activation == "relu2":
        return torch.relu(gate_up).square()
    if activation == "gelu_tanh":
        return gelu_tanh_and_mul(gate_up)
    return silu_and_mul(gate_up) if clamped is None else clamped_swiglu_and_mul(gate_up, clamped)


# The FP8 formats a KV cache may use.
FP8_CACHE_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


@functools.cache
def cache_limit(dtype: torch.dtype) -> float:
    """The saturation bound of a KV-cache dtype: an FP8 format's largest value, 0 for none."""
    return torch.finfo(dtype).max if dtype in FP8_CACHE_DTYPES else 0.0


def to_cache_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Values as a cache of `dtype` holds them: FP8 saturates at its largest value (a plain cast past
    it gives NaN) and rounds to nearest; other dtypes are a plain cast."""
    limit = cache_limit(dtype)
    return (x.float().clamp(-limit, limit) if limit else x).to(dtype)


def store_kv_cache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Writes each token's K/V into its slot. Caches: [num_blocks, block_size, Hkv, D], in the model's
    dtype or an FP8 one (see to_cache_dtype); slot -1 = skip."""
    valid = slot_mapping >= 0
    if not bool(valid.all()):
        k, v, slot_mapping = k[valid], v[valid], slot_mapping[valid]
    for new, cache in ((k, k_cache), (v, v_cache)):
        new = to_cache_dtype(new, cache.dtype)
        if cache_limit(cache.dtype):  # FP8 has no index_copy_ on CPU: copy the bytes
            new, cache = new.view(torch.uint8), cache.view(torch.uint8)
        cache.view(-1, *cache.shape[2:]).index_copy_(0, slot_mapping, new)


@dataclass(frozen=True)
class QKNorm:
    """Per-head RMSNorms of q and k before rotation (Qwen3's, Gemma 3's): their weights [head_dim], their
    epsilon, and whether the normalized row is rounded before the weight multiplies it (rms_norm)."""

    q_weight: torch.Tensor
    k_weight: torch.Tensor
    eps: float
    round_normed: bool = True


def rotate_and_store_kv(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    rotary_dim: int,
    is_neox: bool,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    qk_norm: QKNorm | None = None,
) -> torch.Tensor:
    """What an attention layer does between its qkv projection and its attention, in one op: q and k
    through their per-head norms (`qk_norm`) and the rotation, k and v into their cache slots (slot -1:
    nowhere). Returns the rotated q [T, Hq, D]."""
    if qk_norm is not None:
        q = rms_norm(q, qk_norm.q_weight, qk_norm.eps, qk_norm.round_normed)
        k = rms_norm(k, qk_norm.k_weight, qk_norm.eps, qk_norm.round_normed)
    q, k = rotary_embedding(positions, q, k, cos_sin_cache, rotary_dim, is_neox)
    store_kv_cache(k, v, k_cache, v_cache, slot_mapping)
    return q


def _gather_context(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """The first `length` cached tokens of sequences, in order: [B, length, Hkv, D]."""
    block_size = cache.shape[1]
    pos = torch.arange(length, device=cache.device)
    slots = block_table[:, pos // block_size].long() * block_size + pos % block_size
    return cache.view(-1, *cache.shape[2:])[slots]


def softmax_with_sinks(scores: torch.Tensor, sinks: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last dim of scores [..., H, Q, L] (fp32) with, where `sinks` [H] is given, each
    head's sink logit as one more key whose value is zero (GPT-OSS's attention sinks): its share of the
    probability mass is attended to nothing."""
    if sinks is None:
        return torch.softmax(scores, dim=-1)
    sink = sinks.float().view(*sinks.shape, 1, 1).expand(*scores.shape[:-1], 1)
    return torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float, softcap: float = 0.0,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """q: [B, Q, Hq, D]; k, v: [B, L, Hkv, D]; mask: [B, Q, L] (True = attend). fp32 softmax, over
    logits capped to softcap * tanh(logit / softcap) where softcap > 0 (Gemma 2), with `sinks` [Hq]
    (see softmax_with_sinks)."""
    b, nq, hq, d = q.shape
    hkv = k.shape[2]
    qg = q.float().view(b, nq, hkv, hq // hkv, d)
    scores = torch.einsum("bqhgd,blhd->bhgql", qg, k.float()) * scale
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~mask[:, None, None], float("-inf"))
    probs = softmax_with_sinks(scores, None if sinks is None else sinks.view(hkv, hq // hkv))
    out = torch.einsum("bhgql,blhd->bqhgd", probs, v.float())
    return out.reshape(b, nq, hq, d).to(q.dtype)


def paged_attention_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    max_seq_len: int,
    scale: float,
    sliding_window: int | None = None,
    *,
    softcap: float = 0.0,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """One query token per sequence against its cached context. q: [B, Hq, D] -> [B, Hq, D]; `sinks`
    [Hq] fp32: each head's attention-sink logit (see softmax_with_sinks)."""
    k = _gather_context(k_cache, block_tables, max_seq_len)
    v = _gather_context(v_cache, block_tables, max_seq_len)
    pos = torch.arange(max_seq_len, device=q.device)
    lens = seq_lens.to(q.device).long()[:, None]
    mask = pos[None, :] < lens
    if sliding_window is not None:
        mask &= pos[None, :] > lens - 1 - sliding_window
    return _attend(q[:, None], k, v, mask[:, None, :], scale, softcap, sinks)[:, 0]


def paged_attention_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_len: int,
    scale: float,
    sliding_window: int | None = None,
    softcap: float = 0.0,
    key_limits: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of one sequence's new tokens (the last q_len of seq_len) over its whole context.

    q: [q_len, Hq, D]. The context may begin with prefix-cached or earlier-chunk
    blocks; all of it is read from the cache, which already holds the new K/V.
    `key_limits` [q_len]: the last key each token sees, where it is not the token itself (an image
    attending to itself both ways); the sliding window still counts back from the token. `sinks` as
    in paged_attention_decode.
    """
    q_len = q.shape[0]
    k = _gather_context(k_cache, block_table[None], seq_len)
    v = _gather_context(v_cache, block_table[None], seq_len)
    q_pos = torch.arange(seq_len - q_len, seq_len, device=q.device)[:, None]
    k_pos = torch.arange(seq_len, device=q.device)[None, :]
    limit = q_pos if key_limits is None else torch.maximum(key_limits.to(q.device).long()[:, None], q_pos)
    mask = k_pos <= limit
    if sliding_window is not None:
        mask &= k_pos > q_pos - sliding_window
    return _attend(q[None], k, v, mask[None], scale, softcap, sinks)[0]


@dataclass(frozen=True)
class IntExperts:
    """The integer quantization of a stack of experts (see `int_linear`): scales and zeros
    [E, N, G] per GEMM, and each GEMM's group size (they differ when channel-wise); with a
    `codebook` (MXFP4's FP4 values) the integers index it and there are no zeros."""

    w13_scales: torch.Tensor
    w13_zeros: torch.Tensor | None
    w2_scales: torch.Tensor
    w2_zeros: torch.Tensor | None
    bits: int
    w13_group_size: int
    w2_group_size: int
    codebook: torch.Tensor | None = None
    # Where w2's first column sits in its first group (a rank's share of the experts' intermediate columns
    # may begin inside a group).
    w2_group_offset: int = 0


def fused_moe(
    x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
    w13_scale: torch.Tensor | None = None, w2_scale: torch.Tensor | None = None, block: tuple[int, int] | None = None,
    int_experts: IntExperts | None = None, expert_map: torch.Tensor | None = None,
    biases: tuple[torch.Tensor | None, torch.Tensor | None] | None = None, clamped: ClampedSwiglu | None = None,
    activation: str = "silu",
) -> torch.Tensor:
    """A mixture-of-experts gated MLP: each token's chosen experts, weighted and summed.

    x: [T, H]; w13: [E, 2I, H], each expert's gate rows then up rows; w2: [E, H, I];
    topk_weights, topk_ids: [T, k]. Every expert runs once, on the tokens routed to
    it; the weighting and the sum over a token's k experts are in fp32. With `block`,
    the weights are FP8 and w13_scale, w2_scale their per-expert block scales; with
    `int_experts`, w13 and w2 are packed integers [E, N, K * bits / 32]. With `expert_map` [E_all]
    (expert parallelism), topk_ids index all experts, the map gives each one's index in w13 and w2, and
    an expert mapped to -1 (another rank's) contributes nothing. `biases` (w13's [E, 2I], w2's [E, H];
    either may be None) are added to each expert's GEMM outputs, the second before the routing weight,
    and `clamped` replaces SwiGLU by GPT-OSS's clamped one; `activation` "gelu_tanh" makes it GeGLU. Experts
    activated by "relu2" (Nemotron-H's, ungated) hold only up rows in w13 ([E, I, H]): relu(up)^2.
    """
    b13, b2 = biases or (None, None)

    def weight(w: torch.Tensor, scale: torch.Tensor | None, expert: int) -> torch.Tensor:
        if int_experts is not None:
            q = int_experts
            scales, zeros, size, offset = ((q.w13_scales, q.w13_zeros, q.w13_group_size, 0) if w is w13 else
                                           (q.w2_scales, q.w2_zeros, q.w2_group_size, q.w2_group_offset))
            return int_dequantize(w[expert], scales[expert], None if zeros is None else zeros[expert], None, q.bits,
                                  size, q.codebook, offset).to(x.dtype)
        if block is None:
            return w[expert]
        return fp8_block_dequantize(w[expert], scale[expert], block).to(x.dtype)

    tokens, top_k = topk_ids.shape
    out = torch.zeros(tokens, x.shape[-1], dtype=torch.float32, device=x.device)
    flat = topk_ids.reshape(-1) if expert_map is None else expert_map.long()[topk_ids.reshape(-1)]
    weights = topk_weights.reshape(-1, 1).float()
    order = torch.argsort(flat, stable=True)
    start = int((flat < 0).sum())  # assignments to other ranks' experts sort first: skipped
    # grouped_mm's operands need rows of whole 16-byte units.
    aligned = all(size * x.element_size() % 16 == 0 for size in (x.shape[-1], w13.shape[1], w2.shape[-1]))
    if int_experts is None and block is None and aligned and hasattr(F, "grouped_mm"):
        # Unquantized experts: the same products, one grouped GEMM each way over the sorted assignments
        # instead of a step per expert (what a decode step's time goes to on the CPU).
        rows = order[start:]
        experts, tokens = flat[rows], rows // top_k
        offsets = torch.bincount(experts, minlength=w13.shape[0]).cumsum(0).to(torch.int32)
        gate_up = F.grouped_mm(x[tokens], w13.transpose(1, 2), offs=offsets)
        act = expert_activation(gate_up if b13 is None else gate_up + b13[experts], clamped, activation)
        y = F.grouped_mm(act, w2.transpose(1, 2), offs=offsets)
        out.index_add_(0, tokens, (y if b2 is None else y + b2[experts]).float() * weights[rows])
        return out.to(x.dtype)
    for expert, count in enumerate(torch.bincount(flat[flat >= 0], minlength=w13.shape[0]).tolist()):
        if count == 0:
            continue
        rows = order[start : start + count]
        start += count
        gate_up = F.linear(x[rows // top_k], weight(w13, w13_scale, expert), None if b13 is None else b13[expert])
        act = expert_activation(gate_up, clamped, activation)
        y = F.linear(act, weight(w2, w2_scale, expert), None if b2 is None else b2[expert])
        out.index_add_(0, rows // top_k, y.float() * weights[rows])
    return out.to(x.dtype)


def fp8_block_dequantize(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """The real weight (fp32) of an FP8 weight [N, K] with one scale per block of block[0] x block[1]
    (scale_inv: [ceil(N / block[0]), ceil(K / block[1])]; the last row and column of blocks may be partial)."""
    n, k = weight.shape
    rows = torch.arange(n, device=weight.device) // block[0]
    cols = torch.arange(k, device=weight.device) // block[1]
    return weight.float() * scale_inv.float()[rows][:, cols]


def fp8_block_linear(
    x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int],
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [.., K] @ dequantized weight [N, K]^T (+ bias), in x's dtype: weight-only FP8, activations unquantized."""
    return F.linear(x, fp8_block_dequantize(weight, scale_inv, block).to(x.dtype), bias)


def int_unpack(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    """The unsigned integers [N, K] of a weight packed along K into int32 words [N, K * bits / 32]:
    element k of a row sits in word k // (32 / bits), at bit (k % (32 / bits)) * bits."""
    per_word = 32 // bits
    shifts = torch.arange(per_word, device=qweight.device, dtype=torch.int32) * bits
    values = (qweight.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return values.reshape(qweight.shape[0], -1)


def int_dequantize(
    qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, g_idx: torch.Tensor | None, bits: int,
    group_size: int, codebook: torch.Tensor | None = None, group_offset: int = 0,
) -> torch.Tensor:
    """The real weight (fp32) [N, K] of integer weights: (q - zero) * scale of the column's group,
    the group being g_idx[k] where given (GPTQ's act-order), else (k + group_offset) // group_size; with
    a `codebook` (bitsandbytes' NF4 or FP4 values, MXFP4's), codebook[q] * scale, zeros unused."""
    q = int_unpack(qweight, bits)
    k = q.shape[1]
    groups = g_idx.long() if g_idx is not None else (torch.arange(k, device=q.device) + group_offset) // group_size
    values = codebook.float()[q.long()] if codebook is not None else q.float() - zeros.float()[:, groups]
    return values * scales.float()[:, groups]


def int_linear(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor | None,
    bits: int, group_size: int, bias: torch.Tensor | None = None, codebook: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [.., K] @ dequantized weight [N, K]^T (+ bias), in x's dtype: weight-only integer
    quantization (GPTQ, AWQ, compressed-tensors' W4A16 and W8A16; bitsandbytes' 4-bit), activations
    unquantized.

    qweight: int32 [N, K * bits / 32]; scales: [N, G] (any float dtype); zeros: uint8 [N, G],
    unsigned like the weights (2 ** (bits - 1) for symmetric schemes); g_idx: int32 [K] or None;
    codebook: fp32 [2 ** bits], the value each integer stands for, or None (affine).
    """
    weight = int_dequantize(qweight, scales, zeros, g_idx, bits, group_size, codebook)
    return F.linear(x, weight.to(x.dtype), bias)


def gated_delta_decode_slots(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                             states: torch.Tensor, slots: torch.Tensor, carried: torch.Tensor) -> torch.Tensor:
    """One token of each of S sequences through the gated delta rule (kernels/recurrent.py), each sequence's
    state read from states[slots] (zero where not `carried`: a prompt's first token) and written back in
    place. q, k: [S, Hk, K]; v: [S, H, V]; g: [S, H], or [S, H, K] (a decay per key channel, Kimi Delta
    Attention); beta: [S, H]; states: [slots, H, K, V] -> outputs [S, H, V] fp32."""
    from pagoda.kernels import recurrent

    y, new = recurrent.gated_delta_decode(q, k, v, g, beta, _carried_states(states, slots, carried))
    states.index_copy_(0, slots, new.to(states.dtype))
    return y


def ssd_decode_slots(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                     D: torch.Tensor, states: torch.Tensor, slots: torch.Tensor, carried: torch.Tensor) -> torch.Tensor:
    """One token of each of S sequences through Mamba-2's selective state update (kernels/recurrent.py), the
    states read from and written back to states[slots] as in gated_delta_decode_slots. x: [S, H, P];
    dt: [S, H]; A, D: [H]; B, C: [S, G, N]; states: [slots, H, P, N] -> outputs [S, H, P] fp32."""
    from pagoda.kernels import recurrent

    y, new = recurrent.ssd_decode(x, dt, A, B, C, D, _carried_states(states, slots, carried))
    states.index_copy_(0, slots, new.to(states.dtype))
    return y


def _carried_states(states: torch.Tensor, slots: torch.Tensor, carried: torch.Tensor) -> torch.Tensor:
    """states[slots] in fp32, zero for the sequences not `carried`."""
    return torch.where(carried.view(-1, *[1] * (states.dim() - 1)), states[slots].float(), 0.0)


def gumbel_sample(logits: torch.Tensor, rows: torch.Tensor, temperatures: torch.Tensor, seed: int) -> torch.Tensor:
    """A token of each of `rows` of logits [R, V] drawn from softmax(logits[row] / temperature), by the
    Gumbel-max trick, the noise drawn from a generator seeded with `seed`; int64 [len(rows)]. The Triton
    kernel draws the same distribution from its own counter-based stream (not the same tokens)."""
    generator = torch.Generator(device=logits.device).manual_seed(seed)
    scaled = logits.index_select(0, rows).float() / temperatures.float().unsqueeze(1)
    u = torch.rand(scaled.shape, generator=generator, device=logits.device)
    return scaled.sub_(u.log_().neg_().log_()).argmax(dim=-1)
