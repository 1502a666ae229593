"""Triton kernel of the recurrent decode step: one fused kernel per token.

One program per (batch, head) adds phi(k) ⊗ v to the fp32 state in place and reads it out with
phi(q), reading each symmetric pair of quadratic rows once (_step_sym_kernel). Reference:
:func:`jrt_prompt.kernels.taylor.reference.step_reference`; measured figures: docs/benchmarks.md.

At a small batch (batch × heads programs leave most multiprocessors idle: 16 programs for a
1.3B model at batch 1) the value dimension is also cut into blocks, one program each. Every
block reads the k sums for its denominator, so they are updated by a second, tiny launch of the
same kernel after all blocks have read them (a block cannot know when the others have).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..hardware import multiprocessor_count
from . import reference
from .config import DEFAULT_STEP_CONFIG, StepConfig
from .state import LinearAttentionState
from .triton_common import _pair_tables


@triton.jit
def _step_sym_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    kv_ptr,
    ks_ptr,
    pair_i_ptr,
    pair_j_ptr,
    DV,
    eps,
    scale1,
    F: tl.constexpr,
    NP: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    UPDATE_KV: tl.constexpr,
    UPDATE_KS: tl.constexpr,
):
    """The decode step reading each symmetric pair of quadratic rows once.

    Rows (i, j) and (j, i) of the quadratic block are equal in every state these ops build
    (phi(k) has k_i k_j in both places), so the step reads row (i, j) for i < j, adds
    phi(k)_ij v, writes the result to both rows and counts it twice in the read-out: 153 of
    273 rows are read, all 273 written — the step is memory-bound, so that is ~22% less traffic.
    """
    pid = tl.program_id(0).to(tl.int64)
    FEAT: tl.constexpr = 1 + F + F * F
    R2: tl.constexpr = 0.7071067811865476
    offs_dv = tl.program_id(1) * BLOCK_DV + tl.arange(0, BLOCK_DV)
    dv_mask = offs_dv < DV
    kv = kv_ptr + pid * FEAT * DV
    ks = ks_ptr + pid * FEAT
    if UPDATE_KV:
        v = tl.load(v_ptr + pid * DV + offs_dv, mask=dv_mask, other=0.0).to(tl.float32)

    # constant, linear and diagonal rows: one [1 + 2F (padded), dv] tile
    NL: tl.constexpr = 4 * F  # >= 1 + 2F, power of two
    offs_l = tl.arange(0, NL)
    l_ok = offs_l < 1 + 2 * F
    comp = tl.where(offs_l <= F, offs_l - 1, offs_l - 1 - F)
    comp = tl.where(l_ok & (offs_l >= 1), comp, 0)
    kc = tl.load(k_ptr + pid * F + comp).to(tl.float32) * scale1
    qc = tl.load(q_ptr + pid * F + comp).to(tl.float32) * scale1
    diag = offs_l > F
    phi_k = tl.where(offs_l == 0, 1.0, tl.where(diag, kc * kc * R2, kc))
    phi_q = tl.where(offs_l == 0, 1.0, tl.where(diag, qc * qc * R2, qc))
    phi_k = tl.where(l_ok, phi_k, 0.0)
    phi_q = tl.where(l_ok, phi_q, 0.0)
    row = tl.where(offs_l == 0, 0, tl.where(diag, 1 + F + comp * (F + 1), offs_l))
    if UPDATE_KV:
        m2 = l_ok[:, None] & dv_mask[None, :]
        ptrs = kv + row[:, None] * DV + offs_dv[None, :]
        st = tl.load(ptrs, mask=m2, other=0.0) + phi_k[:, None] * v[None, :]
        tl.store(ptrs, st, mask=m2)
        num = tl.sum(phi_q[:, None] * st, 0)
    z = tl.load(ks + row, mask=l_ok, other=0.0) + phi_k
    if UPDATE_KS:
        tl.store(ks + row, z, mask=l_ok)
    den = tl.sum(phi_q * z, 0)

    # off-diagonal pairs i < j
    for p0 in tl.static_range(0, NP, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        pi = tl.load(pair_i_ptr + offs_p)
        pj = tl.load(pair_j_ptr + offs_p)
        p_ok = pi != pj
        ki = tl.load(k_ptr + pid * F + pi).to(tl.float32)
        kj = tl.load(k_ptr + pid * F + pj).to(tl.float32)
        qi = tl.load(q_ptr + pid * F + pi).to(tl.float32)
        qj = tl.load(q_ptr + pid * F + pj).to(tl.float32)
        phi_k = tl.where(p_ok, ki * kj * (scale1 * scale1 * R2), 0.0)
        phi_q2 = tl.where(p_ok, qi * qj * (2.0 * scale1 * scale1 * R2), 0.0)  # counted twice
        row = 1 + F + pi * F + pj
        mirror = 1 + F + pj * F + pi
        if UPDATE_KV:
            m2 = p_ok[:, None] & dv_mask[None, :]
            st = (
                tl.load(kv + row[:, None] * DV + offs_dv[None, :], mask=m2, other=0.0)
                + phi_k[:, None] * v[None, :]
            )
            tl.store(kv + row[:, None] * DV + offs_dv[None, :], st, mask=m2)
            tl.store(kv + mirror[:, None] * DV + offs_dv[None, :], st, mask=m2)
            num += tl.sum(phi_q2[:, None] * st, 0)
        z = tl.load(ks + row, mask=p_ok, other=0.0) + phi_k
        if UPDATE_KS:
            tl.store(ks + row, z, mask=p_ok)
            tl.store(ks + mirror, z, mask=p_ok)
        den += tl.sum(phi_q2 * z, 0)
    if UPDATE_KV:
        o = num / (den + eps)
        tl.store(o_ptr + pid * DV + offs_dv, o.to(o_ptr.dtype.element_ty), mask=dv_mask)


def _dv_blocks(programs: int, dv: int, device: torch.device) -> int:
    """Value-dimension blocks a (batch, head) program is cut into: enough for about one program
    per multiprocessor, blocks of at least 16 values; 1 once batch × heads alone fill the GPU."""
    sms = multiprocessor_count(device)
    if programs >= sms:
        return 1
    return max(1, min(triton.cdiv(dv, 16), triton.cdiv(sms, programs)))


def decode_step(q, k, v, state: LinearAttentionState, *, eps=1e-12, config: StepConfig | None = None):
    b, h, f = q.shape
    dv = v.shape[-1]
    if f & (f - 1) or q.dtype == torch.float64 or state.kv.dtype != torch.float32:
        # the kernel tiles the feature dim by powers of two and keeps fp32 states
        return reference.step_reference(q, k, v, state, eps=eps)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    kv, ksum = state.kv, state.ksum
    copy_back = not (kv.is_contiguous() and ksum.is_contiguous())
    if copy_back:
        kv, ksum = kv.contiguous(), ksum.contiguous()
    config = config or DEFAULT_STEP_CONFIG
    out = torch.empty_like(v)
    blocks = config.dv_blocks or _dv_blocks(b * h, dv, q.device)
    block_dv = max(16, triton.next_power_of_2(triton.cdiv(dv, blocks)))
    blocks = triton.cdiv(dv, block_dv)
    np_ = triton.next_power_of_2(max(f * (f - 1) // 2, 1))
    args = (q, k, v, out, kv, ksum, *_pair_tables(f, q.device), dv, eps, f**-0.25)
    shape = dict(F=f, NP=np_, BLOCK_P=min(config.block_r, np_), num_warps=config.num_warps)
    if blocks == 1:
        _step_sym_kernel[(b * h, 1)](*args, BLOCK_DV=block_dv, UPDATE_KV=True, UPDATE_KS=True, **shape)
    else:  # the k sums after every block has read them (module docstring)
        _step_sym_kernel[(b * h, blocks)](*args, BLOCK_DV=block_dv, UPDATE_KV=True, UPDATE_KS=False, **shape)
        _step_sym_kernel[(b * h, 1)](*args, BLOCK_DV=16, UPDATE_KV=False, UPDATE_KS=True, **shape)
    if copy_back:
        state.kv.copy_(kv)
        state.ksum.copy_(ksum)
    return out
