"""Triton kernels of the decode step's normalisations: one program per row (per group)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _residual_rms_norm_kernel(
    res_ptr, delta_ptr, w_ptr, res_out_ptr, out_ptr,
    d, eps,
    s_rb, s_db, s_ob, s_nb,
    BLOCK: tl.constexpr, HAS_DELTA: tl.constexpr, NORM_IN_OUT_DTYPE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < d
    s = tl.load(res_ptr + row * s_rb + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_DELTA:
        s += tl.load(delta_ptr + row * s_db + offs, mask=mask, other=0.0).to(tl.float32)
    s = s.to(res_out_ptr.dtype.element_ty)
    tl.store(res_out_ptr + row * s_ob + offs, s, mask=mask)
    h = s.to(tl.float32)
    if NORM_IN_OUT_DTYPE:  # the norm reads the residual rounded to the output dtype
        h = h.to(out_ptr.dtype.element_ty).to(tl.float32)
    variance = tl.sum(h * h, axis=0) / d
    h = h * tl.math.rsqrt(variance + eps)
    if NORM_IN_OUT_DTYPE:
        h = h.to(out_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * s_nb + offs, (w * h).to(out_ptr.dtype.element_ty), mask=mask)


def residual_rms_norm(residual, weight, eps, delta=None, *, residual_dtype, norm_dtype, out_dtype):
    rows, d = residual.shape
    res_out = torch.empty((rows, d), dtype=residual_dtype, device=residual.device)
    out = torch.empty((rows, d), dtype=out_dtype, device=residual.device)
    block = triton.next_power_of_2(d)
    delta_ = delta if delta is not None else residual
    _residual_rms_norm_kernel[(rows,)](
        residual, delta_, weight, res_out, out, d, float(eps),
        residual.stride(0), delta_.stride(0), res_out.stride(0), out.stride(0),
        BLOCK=block, HAS_DELTA=delta is not None,
        NORM_IN_OUT_DTYPE=norm_dtype == out_dtype and out_dtype != torch.float32,
        num_warps=min(16, max(1, block // 256)),
    )
    return res_out, out


@triton.jit
def _gated_rms_norm_kernel(
    x_ptr, z_ptr, w_ptr, out_ptr,
    group_size, eps,
    s_xb, s_zb, s_ob,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    start = tl.program_id(1) * group_size
    offs = tl.arange(0, BLOCK)
    mask = offs < group_size
    x = tl.load(x_ptr + row * s_xb + start + offs, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + row * s_zb + start + offs, mask=mask, other=0.0).to(tl.float32)
    h = x * (z * tl.sigmoid(z))
    variance = tl.sum(h * h, axis=0) / group_size
    h = (h * tl.math.rsqrt(variance + eps)).to(out_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + start + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * s_ob + start + offs, (w * h).to(out_ptr.dtype.element_ty), mask=mask)


def gated_rms_norm(x, gate, weight, eps, group_size):
    rows, width = x.shape
    out = torch.empty((rows, width), dtype=x.dtype, device=x.device)
    block = triton.next_power_of_2(group_size)
    _gated_rms_norm_kernel[(rows, width // group_size)](
        x, gate, weight, out, group_size, float(eps),
        x.stride(0), gate.stride(0), out.stride(0),
        BLOCK=block, num_warps=min(16, max(1, block // 256)),
    )
    return out
