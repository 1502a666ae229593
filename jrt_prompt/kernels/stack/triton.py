"""Triton kernels of the stack's small element-wise ops: one launch each where the PyTorch
math takes three to sixteen (a decode step's CUDA graph holds one node instead)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _swiglu_kernel(h_ptr, out_ptr, m, s_h, s_o, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < m
    value = tl.load(h_ptr + row * s_h + offs, mask=mask, other=0.0)
    gate = tl.load(h_ptr + row * s_h + m + offs, mask=mask, other=0.0).to(tl.float32)
    # F.silu rounds to the input's dtype before the product, as the PyTorch math does
    silu = (gate * tl.sigmoid(gate)).to(value.dtype).to(tl.float32)
    tl.store(out_ptr + row * s_o + offs, (value.to(tl.float32) * silu).to(out_ptr.dtype.element_ty), mask=mask)


def swiglu(h: torch.Tensor) -> torch.Tensor:
    m = h.shape[-1] // 2
    rows = h.reshape(-1, 2 * m)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty((rows.shape[0], m), dtype=h.dtype, device=h.device)
    block = min(1024, triton.next_power_of_2(m))
    _swiglu_kernel[(rows.shape[0], triton.cdiv(m, block))](
        rows, out, m, rows.stride(0), out.stride(0), BLOCK=block, num_warps=4
    )
    return out.view(*h.shape[:-1], m)


@triton.jit
def _conv_gate_step_kernel(
    u_ptr, state_ptr, w_ptr, out_ptr,
    c,
    s_ub, s_sb, s_sc, s_sw, s_wc, s_wk, s_ob,
    KERNEL: tl.constexpr, BLOCK: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < c
    x = tl.load(u_ptr + b * s_ub + offs, mask=mask, other=0.0).to(state_ptr.dtype.element_ty)
    gate = tl.load(u_ptr + b * s_ub + c + offs, mask=mask, other=0.0).to(tl.float32)
    s_p = state_ptr + b * s_sb + offs * s_sc
    acc = x.to(tl.float32) * tl.load(w_ptr + offs * s_wc + (KERNEL - 1) * s_wk, mask=mask, other=0.0).to(tl.float32)
    # the window's oldest input first: state[j] meets tap j, the new input the last tap
    for j in tl.static_range(KERNEL - 1):
        old = tl.load(s_p + j * s_sw, mask=mask, other=0.0)
        acc += old.to(tl.float32) * tl.load(w_ptr + offs * s_wc + j * s_wk, mask=mask, other=0.0).to(tl.float32)
        if j > 0:
            tl.store(s_p + (j - 1) * s_sw, old, mask=mask)  # every load of this row precedes its store
    if KERNEL > 1:
        tl.store(s_p + (KERNEL - 2) * s_sw, x, mask=mask)
    gated = acc * tl.sigmoid(acc) * gate
    tl.store(out_ptr + b * s_ob + offs, gated.to(out_ptr.dtype.element_ty), mask=mask)


def short_conv_gate_step(u: torch.Tensor, state: torch.Tensor, weight: torch.Tensor):
    """Same results as the reference; the new state is written into ``state`` in place, and
    ``state`` is returned as the new state."""
    b = u.shape[0]
    c, kernel = weight.shape
    out = torch.empty((b, c), dtype=u.dtype, device=u.device)
    block = min(256, triton.next_power_of_2(c))
    _conv_gate_step_kernel[(triton.cdiv(c, block), b)](
        u, state, weight, out, c,
        u.stride(0), *state.stride(), *weight.stride(), out.stride(0),
        KERNEL=kernel, BLOCK=block, num_warps=4,
    )
    return out, state


@triton.jit
def _rotary_kernel(
    qkv_ptr, cos_ptr, sin_ptr, q_ptr, k_ptr,
    l, h, hd, half,
    s_b, s_l, s_t, s_h, s_d,
    s_cb, s_cl, s_cd,
    s_ob, s_ol, s_oh,
    BLOCK: tl.constexpr,
):
    bl = tl.program_id(0)
    head = tl.program_id(1)
    b = (bl // l).to(tl.int64)
    t = (bl % l).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    inside = offs < hd
    first = offs < half
    rotated = offs < 2 * half
    pair = tl.where(first, offs + half, offs - half)  # the partner channel of a rotated one
    angle = tl.where(first, offs, offs - half)
    cos = tl.load(cos_ptr + b * s_cb + t * s_cl + angle * s_cd, mask=rotated, other=1.0)
    sin = tl.load(sin_ptr + b * s_cb + t * s_cl + angle * s_cd, mask=rotated, other=0.0)
    sign = tl.where(first, -1.0, 1.0)
    for which in tl.static_range(2):  # q, then k
        base = qkv_ptr + b * s_b + t * s_l + which * s_t + head * s_h
        x = tl.load(base + offs * s_d, mask=inside, other=0.0)
        partner = tl.load(base + pair * s_d, mask=rotated, other=0.0).to(tl.float32)
        out = tl.where(rotated, x.to(tl.float32) * cos + sign * (partner * sin), x.to(tl.float32))
        dst = (q_ptr if which == 0 else k_ptr) + b * s_ob + t * s_ol + head * s_oh + offs
        tl.store(dst, out.to(x.dtype), mask=inside)


def rotary_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    b, l, _, h, hd = qkv.shape
    half = cos.shape[-1]
    q = torch.empty((b, l, h, hd), dtype=qkv.dtype, device=qkv.device)
    k = torch.empty_like(q)
    # [b, l, half]; tables broadcast over rows or positions (size-1 dims) are read with stride 0
    cos3 = cos.expand(b, l, 1, half)[:, :, 0]
    sin3 = sin.expand(b, l, 1, half)[:, :, 0]
    _rotary_kernel[(b * l, h)](
        qkv, cos3, sin3, q, k,
        l, h, hd, half,
        *qkv.stride(),
        *cos3.stride(),
        q.stride(0), q.stride(1), q.stride(2),
        BLOCK=triton.next_power_of_2(hd), num_warps=1,
    )
    return q, k, qkv[:, :, 2]
