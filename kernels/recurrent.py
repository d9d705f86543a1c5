"""Recurrent layers' math in PyTorch: the short causal convolution and Mamba-2's selective scan.

A Mamba-2 layer keeps, per sequence, two states instead of a KV cache: the
last `kernel - 1` inputs of its depthwise causal convolution, and one
[head_dim, state] matrix per head that the scan carries from token to token:

    h_t = exp(dt_t * A) h_{t-1} + dt_t x_t B_t^T        y_t = h_t C_t + D x_t

A prompt chunk runs the scan in its chunked ("SSD") form: within a chunk of
Q tokens the recurrence unrolls into a masked Q x Q matrix (decay between two
positions times C_t . B_s), so the work is matrix products; from chunk to chunk
only the state travels. A decode step is the recurrence itself, one token per
sequence for the whole batch at once, its states gathered from and written back
to their slots by index (no host synchronization: CUDA graphs capture it).
Everything accumulates in float32.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.nn import functional as F


def conv_prefill(x: torch.Tensor, state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 silu: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence's chunk through the depthwise causal convolution and SiLU (unless `silu` is off: LFM2's).

    x: [L, C] the chunk's inputs; state: [C, K - 1] the inputs before it (zeros at a prompt's start);
    weight: [C, K]. Returns (outputs [L, C], the new state [C, K - 1]: the last K - 1 inputs)."""
    kernel = weight.shape[1]
    history = torch.cat([state.to(x.dtype), x.t()], dim=1)  # [C, K - 1 + L]
    out = F.conv1d(history.unsqueeze(0), weight.unsqueeze(1), bias, groups=weight.shape[0])[0].t()
    return F.silu(out) if silu else out, history[:, history.shape[1] - (kernel - 1):]


def conv_decode(x: torch.Tensor, states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                silu: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per sequence: x [B, C], states [B, C, K - 1] -> (outputs [B, C], new states)."""
    window = torch.cat([states.to(x.dtype), x.unsqueeze(-1)], dim=-1)  # [B, C, K]
    out = (window * weight).sum(-1)
    if bias is not None:
        out = out + bias
    return F.silu(out) if silu else out, window[..., 1:]


def _per_head(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """B or C [..., groups, N] -> [..., heads, N]: each group serves heads / groups consecutive heads."""
    return t.repeat_interleave(num_heads // t.shape[-2], dim=-2)


def ssd_prefill(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                D: torch.Tensor, state: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence's chunk of tokens through the scan.

    x: [L, H, P]; dt: [L, H] (already softplus'd and clamped); A: [H] (negative); B, C: [L, G, N];
    D: [H]; state: [H, P, N] float32, the state before the chunk. Returns (y [L, H, P] float32,
    the state after its last token)."""
    num_heads = x.shape[1]
    x, dt = x.float(), dt.float()
    B, C = _per_head(B.float(), num_heads), _per_head(C.float(), num_heads)
    ys = []
    for s in range(0, x.shape[0], chunk_size):
        xs, bs, cs = x[s : s + chunk_size], B[s : s + chunk_size], C[s : s + chunk_size]
        dts = dt[s : s + chunk_size]
        decay = (dts * A).cumsum(0)  # [Q, H]: log of the decay from the chunk's start to each position
        # Decay from position j to position i (i >= j): exp(decay_i - decay_j); zero above the diagonal.
        q = xs.shape[0]
        causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
        between = (decay[:, None, :] - decay[None, :, :]).masked_fill(~causal[..., None], float("-inf")).exp()
        weights = torch.einsum("ihn,jhn->ijh", cs, bs) * between  # [Q, Q, H]
        inputs = xs * dts[..., None]  # dt_j x_j
        y = torch.einsum("ijh,jhp->ihp", weights, inputs)
        y = y + torch.einsum("ihn,hpn->ihp", cs, state) * decay.exp()[..., None]
        to_end = (decay[-1] - decay).exp()  # [Q, H]
        state = state * decay[-1].exp()[:, None, None] + torch.einsum("jh,jhp,jhn->hpn", to_end, inputs, bs)
        ys.append(y)
    return torch.cat(ys) + x * D[:, None], state


def ssd_decode(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
               D: torch.Tensor, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per sequence: x [S, H, P], dt [S, H], B/C [S, G, N], states [S, H, P, N] float32
    -> (y [S, H, P] float32, new states)."""
    num_heads = x.shape[1]
    x, dt = x.float(), dt.float()
    B, C = _per_head(B.float(), num_heads), _per_head(C.float(), num_heads)
    states = states * (dt * A).exp()[..., None, None] + (x * dt[..., None])[..., None] * B[:, :, None, :]
    return torch.einsum("shpn,shn->shp", states, C) + x * D[:, None], states


def _l2_normalized(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def _delta_inputs(q: torch.Tensor, k: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and keys per value head (each key head serves heads / key heads consecutive value heads),
    L2-normalized, the queries also scaled by 1/sqrt(key dim)."""
    q, k = _per_head(q.float(), num_heads), _per_head(k.float(), num_heads)
    return _l2_normalized(q) * q.shape[-1] ** -0.5, _l2_normalized(k)


def _delta_chunks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                  chunk_size: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """The delta rule's inputs chunk by chunk, per head first: q, k (per value head, normalized), v
    [H, Q, D]; the cumulative log decay from the chunk's start [H, Q] (or [H, Q, Dk] per key channel);
    beta [H, Q, 1]; and the causal mask [Q, Q]."""
    q, k = _delta_inputs(q, k, v.shape[1])
    v, g, beta = v.float(), g.float(), beta.float()
    for s in range(0, v.shape[0], chunk_size):
        qs, ks, vs = (t[s : s + chunk_size].transpose(0, 1) for t in (q, k, v))
        decay = g[s : s + chunk_size].transpose(0, 1).cumsum(1)
        n = decay.shape[1]
        yield qs, ks, vs, decay, beta[s : s + chunk_size].t()[..., None], torch.ones(n, n, dtype=torch.bool,
                                                                                      device=v.device).tril()


def gated_delta_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                        state: torch.Tensor, chunk_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence's chunk of tokens through the gated delta rule (Gated DeltaNet's linear attention).

    Per value head, a state S [key dim, value dim] decays by exp(g_t), then moves toward v_t along k_t
    by beta_t (the delta rule: S += k_t (beta_t (v_t - S^T k_t))^T), and each token reads o_t = S^T q_t.
    q, k: [L, Hk, Dk]; v: [L, H, Dv]; g (log decay, <= 0), beta: [L, H]; state: [H, Dk, Dv] float32.

    Within a chunk of Q tokens the corrections d_i = beta_i (v_i - S_{i-1}^T k_i) depend on each other
    through a unit lower-triangular system, (I + A) d = beta (V - exp(G) K S0) with
    A_ij = beta_i exp(G_i - G_j) k_i . k_j for j < i (G: the cumulative log decay), solved at once;
    then o_i = exp(G_i) S0^T q_i + sum_{j <= i} exp(G_i - G_j) (q_i . k_j) d_j and the chunk's last
    state follows. Returns (outputs [L, H, Dv] float32, the state after the last token)."""
    outs = []
    for qs, ks, vs, decay, betas, lower in _delta_chunks(q, k, v, g, beta, chunk_size):
        n = decay.shape[1]
        between = (decay[:, :, None] - decay[:, None, :]).masked_fill(~lower, float("-inf")).exp()  # [H, Q, Q]
        system = (betas * (ks @ ks.transpose(1, 2)) * between).tril(-1) + torch.eye(n, device=v.device)
        rhs = betas * (vs - decay.exp()[..., None] * (ks @ state))
        deltas = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)
        outs.append((decay.exp()[..., None] * (qs @ state) + ((qs @ ks.transpose(1, 2)) * between) @ deltas).transpose(0, 1))
        to_end = (decay[:, -1:] - decay).exp()[..., None]  # [H, Q, 1]
        state = decay[:, -1].exp()[:, None, None] * state + (ks * to_end).transpose(1, 2) @ deltas
    return torch.cat(outs), state


def kda_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                state: torch.Tensor, chunk_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """gated_delta_prefill with a decay per key channel (Kimi Delta Attention): g [L, H, Dk], the state's
    row c decaying by exp(g_t[c]). The chunk's relative decays exp(G_i - G_j) are per channel, so the
    key-key and query-key products weigh each channel by its own (a [H, Q, Q, Dk] tensor, formed where
    j <= i only: exponents never positive, nothing overflows), then the same triangular solve."""
    outs = []
    for qs, ks, vs, decay, betas, lower in _delta_chunks(q, k, v, g, beta, chunk_size):
        n = decay.shape[1]
        between = (decay[:, :, None, :] - decay[:, None, :, :]).masked_fill(~lower[None, :, :, None], float("-inf")).exp()
        system = (betas * torch.einsum("hic,hjc,hijc->hij", ks, ks, between)).tril(-1) + torch.eye(n, device=v.device)
        rhs = betas * (vs - (ks * decay.exp()) @ state)
        deltas = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)
        outs.append(((qs * decay.exp()) @ state + torch.einsum("hic,hjc,hijc->hij", qs, ks, between) @ deltas)
                    .transpose(0, 1))
        to_end = (decay[:, -1:] - decay).exp()  # [H, Q, Dk]
        state = decay[:, -1].exp()[..., None] * state + (ks * to_end).transpose(1, 2) @ deltas
    return torch.cat(outs), state


def gated_delta_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                       states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per sequence: q, k [S, Hk, Dk], v [S, H, Dv], g (log decay) [S, H] or, per key channel (Kimi
    Delta Attention), [S, H, Dk], beta [S, H], states [S, H, Dk, Dv] float32 -> (outputs [S, H, Dv] float32,
    new states)."""
    q, k = _delta_inputs(q, k, v.shape[1])
    decay = g.float().exp()
    states = states * (decay[..., None, None] if g.dim() == 2 else decay[..., None])
    delta = beta.float()[..., None] * (v.float() - torch.einsum("shkv,shk->shv", states, k))
    states = states + k[..., None] * delta[:, :, None, :]
    return torch.einsum("shkv,shk->shv", states, q), states
