"""One decode step of the recurrent layers, in place on their state slots: Gated DeltaNet's delta rule
and Mamba-2's selective state update.

A decode step of a hybrid model is dominated by these states: one [K, V] (or [P, N]) matrix per head
per sequence, read and written whole every step while the token's own vectors are a few hundred
values. In PyTorch the step gathers the batch's states by slot, widens them to fp32, updates and
narrows them and scatters them back: four passes over the states. Here each program takes one
head's tile of one sequence's state straight from its slot, updates it in registers in fp32 and
writes it back once (slots of padding rows are the spare one, their states zero when not carried),
so the step moves each state's bytes twice, the floor. No host synchronization: CUDA graphs capture it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels.triton.launch import block_for

_BLOCK_V = 32  # value (Mamba: head_dim) columns per program: the grid's third dimension tiles the rest


def _output(name: str, shape: tuple[int, int, int], *rows: torch.Tensor) -> torch.Tensor:
    """A decode step's fp32 output, once every tensor whose rows the kernel walks has unit-stride rows."""
    if any(t.stride(-1) != 1 for t in rows):
        raise ValueError(f"{name} needs unit-stride last dimensions")
    return torch.empty(*shape, dtype=torch.float32, device=rows[0].device)


@triton.jit
def _gated_delta_decode_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, beta_ptr, state_ptr, slot_ptr, carried_ptr, out_ptr,
    stride_qs, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh, stride_gs, stride_gh, stride_gk, stride_bs,
    stride_slot, stride_head, stride_key, stride_os, stride_oh,
    key_dim, value_dim, group, scale,
    BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
):
    seq, head, block = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    keys = tl.arange(0, BLOCK_K)
    values = block * BLOCK_V + tl.arange(0, BLOCK_V)
    key_mask, value_mask = keys < key_dim, values < value_dim
    key_head = head // group
    q = tl.load(q_ptr + seq * stride_qs + key_head * stride_qh + keys, mask=key_mask, other=0.0).to(tl.float32)
    k = tl.load(k_ptr + seq * stride_ks + key_head * stride_kh + keys, mask=key_mask, other=0.0).to(tl.float32)
    q = q * tl.rsqrt(tl.sum(q * q, axis=0) + 1e-6) * scale
    k = k * tl.rsqrt(tl.sum(k * k, axis=0) + 1e-6)
    v = tl.load(v_ptr + seq * stride_vs + head * stride_vh + values, mask=value_mask, other=0.0).to(tl.float32)
    # The log decay of each key row of the state: one per head (stride_gk 0) or one per key channel (KDA).
    g = tl.load(g_ptr + seq * stride_gs + head * stride_gh + keys * stride_gk, mask=key_mask, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + seq * stride_bs + head).to(tl.float32)
    slot = tl.load(slot_ptr + seq)
    tile = state_ptr + slot * stride_slot + head * stride_head + keys[:, None] * stride_key + values[None, :]
    mask = key_mask[:, None] & value_mask[None, :]
    state = tl.load(tile, mask=mask, other=0.0).to(tl.float32)
    state = tl.where(tl.load(carried_ptr + seq) != 0, state, 0.0) * tl.exp(g)[:, None]
    delta = beta * (v - tl.sum(state * k[:, None], axis=0))
    state = state + k[:, None] * delta[None, :]
    tl.store(tile, state.to(state_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + seq * stride_os + head * stride_oh + values, tl.sum(state * q[:, None], axis=0), mask=value_mask)


def gated_delta_decode_slots(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                             states: torch.Tensor, slots: torch.Tensor, carried: torch.Tensor) -> torch.Tensor:
    """Same contract as `reference.gated_delta_decode_slots`."""
    seqs, heads, value_dim = v.shape
    key_dim = q.shape[-1]
    out = _output("gated_delta_decode_slots", (seqs, heads, value_dim), states, q, k, v)
    if seqs == 0:
        return out
    g, beta = g.contiguous(), beta.contiguous()
    per_channel = g.dim() == 3
    block_v = min(_BLOCK_V, block_for(value_dim))
    _gated_delta_decode_kernel[(seqs, heads, triton.cdiv(value_dim, block_v))](
        q, k, v, g, beta, states, slots, carried, out,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), g.stride(0), g.stride(1),
        g.stride(2) if per_channel else 0, beta.stride(0),
        states.stride(0), states.stride(1), states.stride(2), out.stride(0), out.stride(1),
        key_dim, value_dim, heads // q.shape[1], key_dim**-0.5,
        BLOCK_K=block_for(key_dim), BLOCK_V=block_v, num_warps=4,
    )
    return out


@triton.jit
def _ssd_decode_kernel(
    x_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, d_ptr, state_ptr, slot_ptr, carried_ptr, out_ptr,
    stride_xs, stride_xh, stride_dts, stride_bs, stride_bg, stride_cs, stride_cg,
    stride_slot, stride_head, stride_row, stride_os, stride_oh,
    head_dim, state_dim, group,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    seq, head, block = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = block * BLOCK_P + tl.arange(0, BLOCK_P)
    cols = tl.arange(0, BLOCK_N)
    row_mask, col_mask = rows < head_dim, cols < state_dim
    grp = head // group
    x = tl.load(x_ptr + seq * stride_xs + head * stride_xh + rows, mask=row_mask, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + seq * stride_dts + head).to(tl.float32)
    decay = tl.exp(dt * tl.load(a_ptr + head).to(tl.float32))
    b = tl.load(b_ptr + seq * stride_bs + grp * stride_bg + cols, mask=col_mask, other=0.0).to(tl.float32)
    c = tl.load(c_ptr + seq * stride_cs + grp * stride_cg + cols, mask=col_mask, other=0.0).to(tl.float32)
    slot = tl.load(slot_ptr + seq)
    tile = state_ptr + slot * stride_slot + head * stride_head + rows[:, None] * stride_row + cols[None, :]
    mask = row_mask[:, None] & col_mask[None, :]
    state = tl.load(tile, mask=mask, other=0.0).to(tl.float32)
    state = tl.where(tl.load(carried_ptr + seq) != 0, state, 0.0) * decay + (dt * x)[:, None] * b[None, :]
    tl.store(tile, state.to(state_ptr.dtype.element_ty), mask=mask)
    y = tl.sum(state * c[None, :], axis=1) + tl.load(d_ptr + head).to(tl.float32) * x
    tl.store(out_ptr + seq * stride_os + head * stride_oh + rows, y, mask=row_mask)


def ssd_decode_slots(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                     D: torch.Tensor, states: torch.Tensor, slots: torch.Tensor, carried: torch.Tensor) -> torch.Tensor:
    """Same contract as `reference.ssd_decode_slots`."""
    seqs, heads, head_dim = x.shape
    state_dim = B.shape[-1]
    out = _output("ssd_decode_slots", (seqs, heads, head_dim), states, x, B, C)
    if seqs == 0:
        return out
    dt, A, D = dt.contiguous(), A.contiguous(), D.contiguous()
    block_p = min(_BLOCK_V, block_for(head_dim))
    _ssd_decode_kernel[(seqs, heads, triton.cdiv(head_dim, block_p))](
        x, dt, A, B, C, D, states, slots, carried, out,
        x.stride(0), x.stride(1), dt.stride(0), B.stride(0), B.stride(1), C.stride(0), C.stride(1),
        states.stride(0), states.stride(1), states.stride(2), out.stride(0), out.stride(1),
        head_dim, state_dim, heads // B.shape[1],
        BLOCK_P=block_p, BLOCK_N=block_for(state_dim), num_warps=4,
    )
    return out
