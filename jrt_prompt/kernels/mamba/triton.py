"""Triton kernels for Mamba-1: the selective scan (parallel over time), causal conv1d, one-token updates.

Selective scan. The state ``h`` [d, n] of each channel evolves independently, so a program owns a
block of channels. To fill the GPU at batch 1 the sequence is also cut into chunks:

1. ``_scan_chunk_kernel`` (state pass) scans each chunk from a zero state and writes the chunk's
   end state and the sum of its time steps (the chunk's total decay is ``exp(A * sum dt)``);
2. ``_scan_carry_kernel`` walks the chunks in order per channel block, turning those into the
   state entering each chunk (and the final state), starting from the initial state;
3. ``_scan_chunk_kernel`` (output pass) rescans each chunk from its entering state and writes
   ``y = C h + D x``, gated by ``silu(z)``.

When batch × channel blocks alone fill the GPU, one output pass over the whole sequence does it
(no chunking). The output is written channels-contiguous (``[batch, length, d]`` memory, returned
as a ``[batch, d, length]`` view), which is what the mixer's out_proj reads next.

The conv kernel also writes channels-contiguous output, read next by x_proj and the scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..hardware import multiprocessor_count

# exp(dt A) is computed as exp2(dt A log2(e)); a constexpr global, readable inside the kernels
LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)


@triton.jit
def _softplus(x):
    # log(1 + e^x), exact enough in fp32 and linear past 20 (as torch's softplus threshold)
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))


@triton.jit
def _scan_chunk_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr,
    h_in_ptr, h_out_ptr, dtsum_ptr,
    length, d, n, chunk_len,
    s_xb, s_xd, s_xt,
    s_dtb, s_dtd, s_dtt,
    s_Ad, s_An,
    s_Bb, s_Bn, s_Bt,
    s_Cb, s_Cn, s_Ct,
    s_zb, s_zd, s_zt,
    s_yb, s_yd, s_yt,
    s_hb, s_hc, s_hd,
    s_sb, s_sc,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    WRITE_Y: tl.constexpr, HAS_H_IN: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, PREFETCH: tl.constexpr,
):
    pid_bd = tl.program_id(0)
    chunk = tl.program_id(1)
    blocks_d = tl.cdiv(d, BLOCK_D)
    b = pid_bd // blocks_d
    offs_d = (pid_bd % blocks_d) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < d
    mask_n = offs_n < n
    mask_dn = mask_d[:, None] & mask_n[None, :]

    A = tl.load(A_ptr + offs_d[:, None] * s_Ad + offs_n[None, :] * s_An, mask=mask_dn, other=0.0).to(tl.float32)
    A = A * LOG2E
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)

    # h_in/h_out are [batch, chunks, d, n] float32 (chunk stride 0 for a single state)
    h_off = b * s_hb + chunk * s_hc + offs_d[:, None] * s_hd + offs_n[None, :]
    if HAS_H_IN:
        h = tl.load(h_in_ptr + h_off, mask=mask_dn, other=0.0)
    else:
        h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dtsum = tl.zeros((BLOCK_D,), dtype=tl.float32)

    start = chunk * chunk_len
    end = tl.minimum(start + chunk_len, length)
    x_p = x_ptr + b * s_xb + offs_d * s_xd
    dt_p = dt_ptr + b * s_dtb + offs_d * s_dtd
    B_p = B_ptr + b * s_Bb + offs_n * s_Bn
    C_p = C_ptr + b * s_Cb + offs_n * s_Cn
    z_p = z_ptr + b * s_zb + offs_d * s_zd
    y_p = y_ptr + b * s_yb + offs_d * s_yd
    # Software pipelining by hand: the next token's inputs are loaded while this one is computed
    # (the recurrence is latency-bound; nothing else overlaps the loads within a program).
    x_n = tl.load(x_p + start * s_xt, mask=mask_d, other=0.0)
    dt_n = tl.load(dt_p + start * s_dtt, mask=mask_d, other=0.0)
    B_n = tl.load(B_p + start * s_Bt, mask=mask_n, other=0.0)
    if WRITE_Y:
        C_n = tl.load(C_p + start * s_Ct, mask=mask_n, other=0.0)
        if HAS_Z:
            z_n = tl.load(z_p + start * s_zt, mask=mask_d, other=0.0)
    for t in range(start, end):
        x_t = x_n.to(tl.float32)
        dt_t = dt_n.to(tl.float32)
        B_t = B_n.to(tl.float32)
        if WRITE_Y:
            C_t = C_n.to(tl.float32)
            if HAS_Z:
                z_t = z_n.to(tl.float32)
        if PREFETCH:
            # the last token re-reads itself rather than reading past the chunk
            tn = tl.minimum(t + 1, end - 1)
            x_n = tl.load(x_p + tn * s_xt, mask=mask_d, other=0.0)
            dt_n = tl.load(dt_p + tn * s_dtt, mask=mask_d, other=0.0)
            B_n = tl.load(B_p + tn * s_Bt, mask=mask_n, other=0.0)
            if WRITE_Y:
                C_n = tl.load(C_p + tn * s_Ct, mask=mask_n, other=0.0)
                if HAS_Z:
                    z_n = tl.load(z_p + tn * s_zt, mask=mask_d, other=0.0)
        else:
            x_t = tl.load(x_p + t * s_xt, mask=mask_d, other=0.0).to(tl.float32)
            dt_t = tl.load(dt_p + t * s_dtt, mask=mask_d, other=0.0).to(tl.float32)
            B_t = tl.load(B_p + t * s_Bt, mask=mask_n, other=0.0).to(tl.float32)
            if WRITE_Y:
                C_t = tl.load(C_p + t * s_Ct, mask=mask_n, other=0.0).to(tl.float32)
                if HAS_Z:
                    z_t = tl.load(z_p + t * s_zt, mask=mask_d, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt_t = dt_t + bias
        if SOFTPLUS:
            dt_t = _softplus(dt_t)
        h = tl.exp2(dt_t[:, None] * A) * h + (dt_t * x_t)[:, None] * B_t[None, :]
        if WRITE_Y:
            y_t = tl.sum(h * C_t[None, :], axis=1)
            if HAS_D:
                y_t += Dv * x_t
            if HAS_Z:
                y_t = y_t * z_t * tl.sigmoid(z_t)
            tl.store(y_p + t * s_yt, y_t.to(y_ptr.dtype.element_ty), mask=mask_d)
        else:
            dtsum += dt_t
    if WRITE_Y:
        if h_out_ptr is not None:
            tl.store(h_out_ptr + b * s_hb + offs_d[:, None] * s_hd + offs_n[None, :], h, mask=mask_dn)
    else:
        tl.store(h_out_ptr + h_off, h, mask=mask_dn)
        tl.store(dtsum_ptr + b * s_sb + chunk * s_sc + offs_d, dtsum, mask=mask_d)


@triton.jit
def _scan_carry_kernel(
    A_ptr, local_ptr, dtsum_ptr, h0_ptr, h_in_ptr, final_ptr,
    d, n, chunks,
    s_Ad, s_An,
    s_hb, s_hc, s_hd,
    s_sb, s_sc,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, HAS_H0: tl.constexpr, HAS_FINAL: tl.constexpr,
):
    pid = tl.program_id(0)
    blocks_d = tl.cdiv(d, BLOCK_D)
    b = pid // blocks_d
    offs_d = (pid % blocks_d) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < d
    mask_dn = mask_d[:, None] & (offs_n < n)[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * s_Ad + offs_n[None, :] * s_An, mask=mask_dn, other=0.0).to(tl.float32)
    A = A * LOG2E
    # h0 and final are [batch, d, n] contiguous float32
    state_off = b * d * n + offs_d[:, None] * n + offs_n[None, :]
    if HAS_H0:
        h = tl.load(h0_ptr + state_off, mask=mask_dn, other=0.0)
    else:
        h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    for c in range(chunks):
        off = b * s_hb + c * s_hc + offs_d[:, None] * s_hd + offs_n[None, :]
        tl.store(h_in_ptr + off, h, mask=mask_dn)
        local = tl.load(local_ptr + off, mask=mask_dn, other=0.0)
        total = tl.load(dtsum_ptr + b * s_sb + c * s_sc + offs_d, mask=mask_d, other=0.0)
        h = tl.exp2(total[:, None] * A) * h + local
    if HAS_FINAL:
        tl.store(final_ptr + state_off, h, mask=mask_dn)


def _block_n(n: int) -> int:
    return max(triton.next_power_of_2(n), 2)


def pick_chunks(batch: int, d: int, length: int, block_d: int, device: torch.device, per_sm: int = 8) -> int:
    """How many time chunks to scan in parallel: enough programs for ``per_sm`` per multiprocessor."""
    programs = batch * triton.cdiv(d, block_d)
    target = per_sm * multiprocessor_count(device)
    if programs >= target // 2 or length <= 128:
        return 1
    chunks = triton.cdiv(target, programs)
    # chunks of at least 64 tokens: shorter ones cost more in the two extra passes than they give
    return max(1, min(chunks, triton.cdiv(length, 64)))


@dataclass(frozen=True)
class ScanConfig:
    """Launch shape of the selective scan: channels per program, warps, prefetching, programs per SM."""

    block_d: int = 64
    num_warps: int = 4
    prefetch: bool = True
    programs_per_sm: int = 8


# Tuned on an H200 at Mamba-1.4B's sizes (scripts/tune_mamba_scan.py): one warp per program and
# ~16 programs per multiprocessor beat 4 warps (batch 1 x 4096 tokens: 0.32 vs 0.63 ms a layer);
# from batch 4 on, 32-channel programs (batch 8 x 2048: 1.10 vs 1.34 ms).
DEFAULT_SCAN_CONFIG = ScanConfig(block_d=64, num_warps=1, prefetch=True, programs_per_sm=16)
LARGE_BATCH_SCAN_CONFIG = ScanConfig(block_d=32, num_warps=1, prefetch=True, programs_per_sm=8)


def default_scan_config(batch: int) -> ScanConfig:
    return DEFAULT_SCAN_CONFIG if batch < 4 else LARGE_BATCH_SCAN_CONFIG


def selective_scan(
    x, dt, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    initial_state=None, return_last_state=False, chunks: int | None = None, block_d: int | None = None,
    config: ScanConfig | None = None,
):
    """Triton selective scan; same arguments and results as the reference (``chunks`` None picks)."""
    config = config or default_scan_config(x.shape[0])
    block_d = block_d or config.block_d
    batch, d, length = x.shape
    n = A.shape[1]
    device = x.device
    block_n = _block_n(n)
    block_d = min(block_d, max(16, triton.next_power_of_2(d)))
    # channels-contiguous output: [batch, length, d] memory viewed as [batch, d, length]
    y = torch.empty(batch, length, d, dtype=x.dtype, device=device).transpose(1, 2)
    final = torch.empty(batch, d, n, dtype=torch.float32, device=device) if return_last_state else None
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    if length == 0:
        if final is not None:
            final.copy_(h0 if h0 is not None else torch.zeros_like(final))
        return (y, final) if return_last_state else y
    chunks = chunks or pick_chunks(batch, d, length, block_d, device, config.programs_per_sm)
    chunk_len = triton.cdiv(length, chunks)
    chunks = triton.cdiv(length, chunk_len)
    z_ = z if z is not None else x
    D_ = D if D is not None else A
    bias_ = delta_bias if delta_bias is not None else A
    grid = (batch * triton.cdiv(d, block_d), chunks)
    common = dict(BLOCK_D=block_d, BLOCK_N=block_n, HAS_D=D is not None, HAS_Z=z is not None,
                  HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus), PREFETCH=config.prefetch,
                  num_warps=config.num_warps)

    def launch(write_y, h_in, h_out, dtsum, h_strides, s_strides, grid):
        _scan_chunk_kernel[grid](
            x, dt, A, B, C, D_, z_, bias_, y, h_in, h_out, dtsum,
            length, d, n, chunk_len,
            *x.stride(), *dt.stride(), *A.stride(), *B.stride(), *C.stride(), *z_.stride(), *y.stride(),
            *h_strides, *s_strides,
            WRITE_Y=write_y, HAS_H_IN=h_in is not None, **common,
        )

    if chunks == 1:
        launch(True, h0, final, None, (d * n, 0, n), (0, 0), grid)
        return (y, final) if return_last_state else y
    local = torch.empty(batch, chunks, d, n, dtype=torch.float32, device=device)
    dtsum = torch.empty(batch, chunks, d, dtype=torch.float32, device=device)
    h_strides = local.stride()[:3]
    s_strides = dtsum.stride()[:2]
    launch(False, None, local, dtsum, h_strides, s_strides, grid)
    h_in = torch.empty_like(local)
    _scan_carry_kernel[(grid[0],)](
        A, local, dtsum, h0, h_in, final, d, n, chunks, *A.stride(), *h_strides, *s_strides,
        BLOCK_D=block_d, BLOCK_N=block_n, HAS_H0=h0 is not None, HAS_FINAL=final is not None,
        num_warps=config.num_warps,
    )
    launch(True, h_in, None, None, h_strides, s_strides, grid)
    return (y, final) if return_last_state else y


@triton.jit
def _state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr,
    d, n,
    s_hb, s_hd, s_hn,
    s_xb, s_xd, s_dtb, s_dtd, s_Ad, s_An, s_Bb, s_Bn, s_Cb, s_Cn, s_zb, s_zd, s_yb, s_yd,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    b = tl.program_id(1)
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < d
    mask_n = offs_n < n
    mask_dn = mask_d[:, None] & mask_n[None, :]
    h_p = state_ptr + b * s_hb + offs_d[:, None] * s_hd + offs_n[None, :] * s_hn
    h = tl.load(h_p, mask=mask_dn, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + b * s_xb + offs_d * s_xd, mask=mask_d, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + b * s_dtb + offs_d * s_dtd, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    A = tl.load(A_ptr + offs_d[:, None] * s_Ad + offs_n[None, :] * s_An, mask=mask_dn, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + b * s_Bb + offs_n * s_Bn, mask=mask_n, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * s_Cb + offs_n * s_Cn, mask=mask_n, other=0.0).to(tl.float32)
    h = tl.exp2(dt[:, None] * A * LOG2E) * h + (dt * x)[:, None] * Bv[None, :]
    tl.store(h_p, h.to(state_ptr.dtype.element_ty), mask=mask_dn)
    y = tl.sum(h * Cv[None, :], axis=1)
    if HAS_D:
        y += x * tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_Z:
        zv = tl.load(z_ptr + b * s_zb + offs_d * s_zd, mask=mask_d, other=0.0).to(tl.float32)
        y = y * zv * tl.sigmoid(zv)
    tl.store(y_ptr + b * s_yb + offs_d * s_yd, y.to(y_ptr.dtype.element_ty), mask=mask_d)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, block_d=64):
    batch, d = x.shape
    n = A.shape[1]
    y = torch.empty_like(x)
    z_ = z if z is not None else x
    D_ = D if D is not None else A
    bias_ = dt_bias if dt_bias is not None else A
    block_d = min(block_d, max(16, triton.next_power_of_2(d)))
    grid = (triton.cdiv(d, block_d), batch)
    _state_update_kernel[grid](
        state, x, dt, A, B, C, D_, z_, bias_, y, d, n,
        *state.stride(), *x.stride(), *dt.stride(), *A.stride(), *B.stride(), *C.stride(), *z_.stride(),
        *y.stride(),
        BLOCK_D=block_d, BLOCK_N=_block_n(n), HAS_D=D is not None, HAS_Z=z is not None,
        HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
    )
    return y


@triton.jit
def _conv1d_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, y_ptr,
    d, length,
    s_xb, s_xd, s_xt, s_wd, s_wk, s_ib, s_id, s_it, s_yb, s_yd, s_yt,
    KERNEL: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr,
):
    b = tl.program_id(2)
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < d
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for k in tl.static_range(KERNEL):
        w = tl.load(w_ptr + offs_d * s_wd + k * s_wk, mask=mask_d, other=0.0).to(tl.float32)
        src = offs_t - (KERNEL - 1 - k)
        inside = (src >= 0) & (src < length)
        v = tl.load(
            x_ptr + b * s_xb + offs_d[None, :] * s_xd + src[:, None] * s_xt,
            mask=inside[:, None] & mask_d[None, :], other=0.0,
        ).to(tl.float32)
        if HAS_INIT:
            # positions before the first token come from the initial state's last KERNEL-1 inputs
            past = src + (KERNEL - 1)
            before = (src < 0) & (past >= 0)
            v += tl.load(
                init_ptr + b * s_ib + offs_d[None, :] * s_id + past[:, None] * s_it,
                mask=before[:, None] & mask_d[None, :], other=0.0,
            ).to(tl.float32)
        acc += v * w[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(
        y_ptr + b * s_yb + offs_d[None, :] * s_yd + offs_t[:, None] * s_yt,
        acc.to(y_ptr.dtype.element_ty),
        mask=(offs_t < length)[:, None] & mask_d[None, :],
    )


def causal_conv1d(x, weight, bias=None, activation=None, initial_state=None, block_t=64, block_d=128):
    batch, d, length = x.shape
    kernel = weight.shape[-1]
    y = torch.empty(batch, length, d, dtype=x.dtype, device=x.device).transpose(1, 2)
    if length == 0:
        return y
    init = initial_state[..., -(kernel - 1):] if initial_state is not None and kernel > 1 else None
    init_ = init if init is not None else x
    bias_ = bias if bias is not None else weight
    block_d = min(block_d, max(16, triton.next_power_of_2(d)))
    grid = (triton.cdiv(length, block_t), triton.cdiv(d, block_d), batch)
    _conv1d_kernel[grid](
        x, weight, bias_, init_, y, d, length,
        *x.stride(), *weight.stride(), *init_.stride(), *y.stride(),
        KERNEL=kernel, BLOCK_T=block_t, BLOCK_D=block_d, HAS_BIAS=bias is not None,
        HAS_INIT=init is not None, SILU=activation in ("silu", "swish"),
    )
    return y


@triton.jit
def _conv1d_update_kernel(
    x_ptr, state_ptr, w_ptr, bias_ptr, y_ptr,
    d, width,
    s_xb, s_xd, s_sb, s_sd, s_sw, s_wd, s_wk, s_yb, s_yd,
    KERNEL: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
):
    b = tl.program_id(1)
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_w = tl.arange(0, BLOCK_W)
    mask_d = offs_d < d
    s_p = state_ptr + b * s_sb + offs_d[:, None] * s_sd
    # rolled[j] = state[j + 1] for j < width - 1, and the new input at j = width - 1
    old = tl.load(s_p + (offs_w[None, :] + 1) * s_sw, mask=mask_d[:, None] & (offs_w[None, :] + 1 < width),
                  other=0.0)
    x = tl.load(x_ptr + b * s_xb + offs_d * s_xd, mask=mask_d, other=0.0)
    rolled = tl.where(offs_w[None, :] == width - 1, x[:, None].to(old.dtype), old)
    tl.store(s_p + offs_w[None, :] * s_sw, rolled, mask=mask_d[:, None] & (offs_w[None, :] < width))
    # the kernel's taps meet the last KERNEL entries of the rolled window
    tap = offs_w - (width - KERNEL)
    w = tl.load(w_ptr + offs_d[:, None] * s_wd + tap[None, :] * s_wk,
                mask=mask_d[:, None] & (tap[None, :] >= 0) & (offs_w[None, :] < width), other=0.0)
    y = tl.sum(rolled.to(tl.float32) * w.to(tl.float32), axis=1)
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if SILU:
        y = y * tl.sigmoid(y)
    tl.store(y_ptr + b * s_yb + offs_d * s_yd, y.to(y_ptr.dtype.element_ty), mask=mask_d)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, block_d=128):
    batch, d = x.shape
    width = conv_state.shape[-1]
    kernel = weight.shape[-1]
    y = torch.empty_like(x)
    bias_ = bias if bias is not None else weight
    block_d = min(block_d, max(16, triton.next_power_of_2(d)))
    grid = (triton.cdiv(d, block_d), batch)
    _conv1d_update_kernel[grid](
        x, conv_state, weight, bias_, y, d, width,
        *x.stride(), *conv_state.stride(), *weight.stride(), *y.stride(),
        KERNEL=kernel, BLOCK_W=max(triton.next_power_of_2(width), 2), BLOCK_D=block_d,
        HAS_BIAS=bias is not None, SILU=activation in ("silu", "swish"),
    )
    return y
