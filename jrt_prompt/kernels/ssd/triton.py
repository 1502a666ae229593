"""Triton kernels for Mamba-2 SSD: the chunked scan (prefill) and the fused one-token step.

The chunked scan runs five launches (the math is in :mod:`.reference`):

1. ``_dt_cumsum_kernel`` — per (batch row, chunk, block of heads): dt + dt_bias, softplus,
   clamp, and the cumulative log decay a_i = sum_{j <= i} dt_j A inside the chunk. Both go to
   float32 buffers [b, h, chunks * chunk] (positions past the end hold dt = 0, so the decay is
   flat there and the padded tail adds nothing).
2. ``_chunk_state_kernel`` — per (batch*head, chunk, block of p x n): the state a chunk adds on
   its own, sum_j exp(a_last - a_j) dt_j x_j^T B_j, one tensor-core product per block of tokens
   ([p, tokens] x [tokens, n]), fp32 accumulator, into [b, chunks, h, p, n].
3. ``_state_pass_kernel`` — per (batch*head, block of p*n): the carry over chunks from the initial
   state, S_in(c+1) = exp(a_last(c)) S_in(c) + S_chunk(c), written over the chunk states in place
   (each slot then holds the state the chunk starts from); the last one is the final state.
   ``SSDConfig(fused_states=True)`` runs 2 and 3 as one kernel, ``_state_carry_kernel``, that
   walks the chunks per (batch*head, block of p x n) and stores the start states in the inputs'
   dtype: no fp32 chunk-state buffer, less parallelism.
4. ``_chunk_cb_kernel`` — per (chunk, block pair i >= j, batch*group): C_i . B_j, float32, once
   per group for all its heads (``SSDConfig(precompute_cb=False)`` leaves it to the next kernel,
   once per head).
5. ``_chunk_out_kernel`` — per (batch*head, block of query tokens of a chunk, block of p): the
   state term exp(a_i) C_i S_in, then the intra-chunk term over the earlier key blocks,
   ((C B^T) * exp(a_i - a_j) * dt_j, causal) x, the D skip and the optional silu(z) gate.
   Heads vary fastest in the grids, so the programs running together share B, C and C B^T.

B and C are read per group by index (head h reads group h // (heads / groups)); no input is
copied or expanded: every input is read through its strides (transformers passes views of one
projection, and stride-0 ``expand``ed views to the step). State and accumulators are float32;
the inputs may be float32 (products in IEEE fp32), bfloat16 or float16 (tensor-core products,
fp32 accumulation). The step kernel (``_step_kernel``) updates the state in place, one program
per (batch*head, block of p) holding a [p, n] tile.

Launch parameters live in :class:`SSDConfig`; they are not tuned yet (see docs/kernels_ssd.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from jrt_prompt.errors import JRTError


@dataclass(frozen=True)
class SSDConfig:
    """Launch parameters of the chunked scan. ``chunk=0`` takes the caller's chunk_size."""

    chunk: int = 0  # tokens per chunk (power of two, 16..256); the result does not depend on it
    block_m: int = 64  # query tokens per output program
    block_k: int = 32  # key tokens per inner step (output and chunk-state kernels)
    block_p: int = 64  # head-dim columns per program
    block_n: int = 64  # state columns per chunk-state program and per C B^T step (the output kernel takes all of n)
    block_h: int = 8  # heads per program of the dt / cumsum kernel
    block_pass: int = 1024  # state elements per program of the carry pass
    pass_warps: int = 4  # warps per program of the carry pass (a serial walk: latency-bound)
    # C B^T of each chunk once per group in its own launch (read by every head of the group), instead
    # of inside the output kernel once per head
    precompute_cb: bool = True
    # each chunk's state and the carry over chunks in one kernel that walks the chunks (parallel over
    # batch*heads and p x n blocks only; no fp32 chunk-state buffer), instead of a parallel
    # chunk-state kernel and a separate carry pass. Same outputs to the bit; on an H200 (Mamba-2-1.3B
    # shapes, bf16) 0.55 vs 0.53 ms at 1 x 4k, 0.69 vs 0.87 ms at 1 x 8k, 0.96 vs 1.29 ms at 8 x 2k
    fused_states: bool = True
    # 8 warps with 32-token key blocks: no kernel spills on sm_90 (ptxas, bf16 and fp32; 4 warps
    # with 64-token blocks take 250+ registers and spill in fp32)
    num_warps: int = 8
    num_stages: int = 2

    def __post_init__(self):
        if self.chunk and not (16 <= self.chunk <= 256 and _is_pow2(self.chunk)):
            raise JRTError(f"SSDConfig.chunk={self.chunk} must be 0 (the caller's) or a power of two in 16..256")
        for name in ("block_m", "block_k", "block_p", "block_n"):
            value = getattr(self, name)
            if not (value >= 16 and _is_pow2(value)):
                raise JRTError(f"SSDConfig.{name}={value} must be a power of two >= 16 (tensor-core tiles)")
        for name in ("block_h", "block_pass", "pass_warps", "num_warps"):
            value = getattr(self, name)
            if not (value >= 1 and _is_pow2(value)):
                raise JRTError(f"SSDConfig.{name}={value} must be a power of two")


def _is_pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


DEFAULT_CONFIG = SSDConfig()


def _pow2(x: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(int(x)))


def _dot_types(dtype: torch.dtype):
    """(operand dtype, input_precision) of the kernels' products for inputs of ``dtype``.

    fp32 inputs: exact IEEE products (no tf32). Half types: tensor-core products of that type,
    except under the CPU interpreter, which computes bf16 dots wrongly (it multiplies the raw
    bits): there the operands, already rounded to bf16, are multiplied in fp32.
    """
    if dtype == torch.float32:
        return tl.float32, "ieee"
    if dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET", "0") == "1":
        return tl.float32, "ieee"
    return {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[dtype], None


@triton.jit
def _mm(a, b, DOT: tl.constexpr, PREC: tl.constexpr):
    return tl.dot(a.to(DOT), b.to(DOT), input_precision=PREC)


def _chunk_len(chunk_size: int, config: SSDConfig) -> int:
    if config.chunk:
        return config.chunk
    if 16 <= chunk_size <= 256 and _is_pow2(chunk_size):
        return chunk_size
    return 64


@triton.jit
def _dt_cumsum_kernel(
    dt_ptr, A_ptr, bias_ptr, dt_out_ptr, cs_out_ptr,
    L, H, NCHUNK,
    s_dt_b, s_dt_l, s_dt_h, s_A, s_bias,
    dt_min, dt_max,
    CHUNK: tl.constexpr, BLOCK_H: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    pid_bc = tl.program_id(0)
    pid_h = tl.program_id(1)
    b = (pid_bc // NCHUNK).to(tl.int64)
    c = pid_bc % NCHUNK
    offs_t = tl.arange(0, CHUNK)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    pos = c * CHUNK + offs_t
    mask_h = offs_h < H
    mask = (pos < L)[:, None] & mask_h[None, :]
    t0 = (c * CHUNK).to(tl.int64)  # the chunk's first token; 64-bit so long sequences do not overflow
    dt_c = dt_ptr + b * s_dt_b + t0 * s_dt_l
    dt = tl.load(dt_c + offs_t[:, None] * s_dt_l + offs_h[None, :] * s_dt_h, mask=mask, other=0.0)
    dt = dt.to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_h * s_bias, mask=mask_h, other=0.0).to(tl.float32)[None, :]
    if SOFTPLUS:
        dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
    dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
    dt = tl.where(mask, dt, 0.0)
    A = tl.load(A_ptr + offs_h * s_A, mask=mask_h, other=0.0).to(tl.float32)
    cs = tl.cumsum(dt * A[None, :], axis=0)
    LP = NCHUNK * CHUNK
    out = b * H * LP + offs_h[None, :] * LP + pos[:, None]
    tl.store(dt_out_ptr + out, dt, mask=mask_h[None, :])
    tl.store(cs_out_ptr + out, cs, mask=mask_h[None, :])


@triton.jit
def _chunk_state_tile(
    x_base, B_base, dt_ptr, cs_ptr, row, c, t0, L,
    s_x_l, s_x_p, s_B_l, s_B_n,
    offs_p, offs_n, mask_p, mask_n,
    CHUNK: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT: tl.constexpr, PREC: tl.constexpr,
):
    """sum_j exp(a_last - a_j) dt_j x_j^T B_j over chunk c (first token t0, int64): a [BLOCK_P, BLOCK_N]
    fp32 tile."""
    cs_last = tl.load(cs_ptr + row + c * CHUNK + CHUNK - 1)
    acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    k_hi = tl.minimum(CHUNK, L - c * CHUNK)
    x_c = x_base + t0 * s_x_l
    B_c = B_base + t0 * s_B_l
    for k0 in range(0, k_hi, BLOCK_K):
        local = k0 + tl.arange(0, BLOCK_K)  # token offsets inside the chunk
        pos = c * CHUNK + local
        mask_k = pos < L
        # x^T tile [p, tokens], loaded transposed through its strides
        xt = tl.load(
            x_c + local[None, :] * s_x_l + offs_p[:, None] * s_x_p,
            mask=mask_k[None, :] & mask_p[:, None], other=0.0,
        )
        Bk = tl.load(
            B_c + local[:, None] * s_B_l + offs_n[None, :] * s_B_n,
            mask=mask_k[:, None] & mask_n[None, :], other=0.0,
        )
        scale = tl.exp(cs_last - tl.load(cs_ptr + row + pos)) * tl.load(dt_ptr + row + pos)
        xt = (xt.to(tl.float32) * scale[None, :]).to(Bk.dtype)
        acc += _mm(xt, Bk, DOT, PREC)
    return acc


@triton.jit
def _chunk_state_kernel(
    x_ptr, B_ptr, dt_ptr, cs_ptr, st_ptr,
    L, H, P, N, NCHUNK, HG,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_B_b, s_B_l, s_B_g, s_B_n,
    CHUNK: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT: tl.constexpr, PREC: tl.constexpr,
):
    bh = tl.program_id(0)  # heads vary fastest: the programs running together share B
    c = tl.program_id(1)
    pid_pn = tl.program_id(2)
    b = (bh // H).to(tl.int64)
    h = bh % H
    grp = h // HG
    n_blocks = tl.cdiv(N, BLOCK_N)
    offs_p = (pid_pn // n_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = (pid_pn % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_p = offs_p < P
    mask_n = offs_n < N
    row = bh.to(tl.int64) * NCHUNK * CHUNK
    t0 = c.to(tl.int64) * CHUNK  # 64-bit token offsets, so long sequences do not overflow
    acc = _chunk_state_tile(
        x_ptr + b * s_x_b + h * s_x_h, B_ptr + b * s_B_b + grp * s_B_g, dt_ptr, cs_ptr, row, c, t0, L,
        s_x_l, s_x_p, s_B_l, s_B_n, offs_p, offs_n, mask_p, mask_n,
        CHUNK, BLOCK_K, BLOCK_P, BLOCK_N, DOT, PREC,
    )
    st = st_ptr + ((b * NCHUNK + c) * H + h) * P * N
    tl.store(st + offs_p[:, None] * N + offs_n[None, :], acc, mask=mask_p[:, None] & mask_n[None, :])


@triton.jit
def _state_carry_kernel(
    x_ptr, B_ptr, dt_ptr, cs_ptr, init_ptr, sin_ptr, final_ptr,
    L, H, P, N, NCHUNK, HG,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_B_b, s_B_l, s_B_g, s_B_n,
    s_i_b, s_i_h, s_i_p, s_i_n,
    CHUNK: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_INIT: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
):
    """The chunk states and the carry in one walk over the chunks, per (batch*head, p x n block):
    writes each chunk's start state (in ``sin_ptr``'s dtype) and the final state (fp32)."""
    bh = tl.program_id(0)
    pid_pn = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    grp = h // HG
    n_blocks = tl.cdiv(N, BLOCK_N)
    offs_p = (pid_pn // n_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = (pid_pn % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_p = offs_p < P
    mask_n = offs_n < N
    mask = mask_p[:, None] & mask_n[None, :]
    tile = offs_p[:, None] * N + offs_n[None, :]
    if HAS_INIT:
        s = tl.load(
            init_ptr + b * s_i_b + h * s_i_h + offs_p[:, None] * s_i_p + offs_n[None, :] * s_i_n,
            mask=mask, other=0.0,
        ).to(tl.float32)
    else:
        s = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    row = bh.to(tl.int64) * NCHUNK * CHUNK
    x_base = x_ptr + b * s_x_b + h * s_x_h
    B_base = B_ptr + b * s_B_b + grp * s_B_g
    t0 = b * 0  # the chunk's first token, 64-bit
    for c in range(0, NCHUNK):
        tl.store(sin_ptr + ((b * NCHUNK + c) * H + h) * P * N + tile, s.to(sin_ptr.dtype.element_ty), mask=mask)
        acc = _chunk_state_tile(
            x_base, B_base, dt_ptr, cs_ptr, row, c, t0, L,
            s_x_l, s_x_p, s_B_l, s_B_n, offs_p, offs_n, mask_p, mask_n,
            CHUNK, BLOCK_K, BLOCK_P, BLOCK_N, DOT, PREC,
        )
        s = s * tl.exp(tl.load(cs_ptr + row + c * CHUNK + CHUNK - 1)) + acc
        t0 += CHUNK
    tl.store(final_ptr + bh.to(tl.int64) * P * N + tile, s, mask=mask)


@triton.jit
def _state_pass_kernel(
    st_ptr, cs_ptr, init_ptr, final_ptr,
    H, P, N, NCHUNK,
    s_i_b, s_i_h, s_i_p, s_i_n,
    CHUNK: tl.constexpr, BLOCK: tl.constexpr, HAS_INIT: tl.constexpr,
):
    bh = tl.program_id(0)
    b = (bh // H).to(tl.int64)
    h = bh % H
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < P * N
    if HAS_INIT:
        pp = offs // N
        nn = offs % N
        s = tl.load(init_ptr + b * s_i_b + h * s_i_h + pp * s_i_p + nn * s_i_n, mask=mask, other=0.0)
        s = s.to(tl.float32)
    else:
        s = tl.zeros([BLOCK], dtype=tl.float32)
    row = bh.to(tl.int64) * NCHUNK * CHUNK
    for c in range(0, NCHUNK):
        ptr = st_ptr + ((b * NCHUNK + c) * H + h) * P * N + offs
        chunk_state = tl.load(ptr, mask=mask, other=0.0)
        tl.store(ptr, s, mask=mask)
        decay = tl.exp(tl.load(cs_ptr + row + c * CHUNK + CHUNK - 1))
        s = decay * s + chunk_state
    tl.store(final_ptr + bh.to(tl.int64) * P * N + offs, s, mask=mask)


@triton.jit
def _chunk_cb_kernel(
    B_ptr, C_ptr, cb_ptr,
    L, N, NCHUNK, G,
    s_B_b, s_B_l, s_B_g, s_B_n,
    s_C_b, s_C_l, s_C_g, s_C_n,
    CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT: tl.constexpr, PREC: tl.constexpr,
):
    """C_i . B_j for one [BLOCK_M, BLOCK_M] block (j's block <= i's) of a chunk of one group."""
    M_BLOCKS: tl.constexpr = CHUNK // BLOCK_M
    pid = tl.program_id(0)
    bg = tl.program_id(1)
    c = pid // (M_BLOCKS * M_BLOCKS)
    mb = (pid // M_BLOCKS) % M_BLOCKS
    kb = pid % M_BLOCKS
    if kb <= mb:
        b = (bg // G).to(tl.int64)
        grp = bg % G
        rows = mb * BLOCK_M + tl.arange(0, BLOCK_M)  # token offsets inside the chunk
        cols = kb * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = c * CHUNK + rows < L
        mask_k = c * CHUNK + cols < L
        t0 = (c * CHUNK).to(tl.int64)
        C_c = C_ptr + b * s_C_b + grp * s_C_g + t0 * s_C_l
        B_c = B_ptr + b * s_B_b + grp * s_B_g + t0 * s_B_l
        acc = tl.zeros([BLOCK_M, BLOCK_M], dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < N
            Cm = tl.load(
                C_c + rows[:, None] * s_C_l + offs_n[None, :] * s_C_n,
                mask=mask_m[:, None] & mask_n[None, :], other=0.0,
            )
            Bt = tl.load(
                B_c + cols[None, :] * s_B_l + offs_n[:, None] * s_B_n,
                mask=mask_k[None, :] & mask_n[:, None], other=0.0,
            )
            acc += _mm(Cm, Bt, DOT, PREC)
        cb = cb_ptr + (b * NCHUNK + c) * G * CHUNK * CHUNK + grp * CHUNK * CHUNK
        tl.store(cb + rows[:, None] * CHUNK + cols[None, :], acc.to(cb_ptr.dtype.element_ty))


@triton.jit
def _chunk_out_kernel(
    x_ptr, B_ptr, C_ptr, z_ptr, D_ptr, dt_ptr, cs_ptr, st_ptr, cb_ptr, out_ptr,
    L, H, P, N, NCHUNK, HG, G,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_B_b, s_B_l, s_B_g, s_B_n,
    s_C_b, s_C_l, s_C_g, s_C_n,
    s_z_b, s_z_l, s_z_h, s_z_p,
    s_D_h, s_D_p,
    s_o_b, s_o_l, s_o_h, s_o_p,
    CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_CB: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
):
    M_BLOCKS: tl.constexpr = CHUNK // BLOCK_M
    bh = tl.program_id(0)  # heads vary fastest: the programs running together share B, C (and C B^T)
    pid_m = tl.program_id(1)
    c = pid_m // M_BLOCKS
    mb = pid_m % M_BLOCKS
    b = (bh // H).to(tl.int64)
    h = bh % H
    grp = h // HG
    rows = mb * BLOCK_M + tl.arange(0, BLOCK_M)  # token offsets inside the chunk
    offs_m = c * CHUNK + rows  # absolute token positions (masks, dt / decay buffers)
    offs_p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_m = offs_m < L
    mask_p = offs_p < P
    mask_n = offs_n < N
    LP = NCHUNK * CHUNK
    row = bh.to(tl.int64) * LP
    t0 = (c * CHUNK).to(tl.int64)  # 64-bit chunk offsets, so long sequences do not overflow
    x_c = x_ptr + b * s_x_b + h * s_x_h + t0 * s_x_l
    B_c = B_ptr + b * s_B_b + grp * s_B_g + t0 * s_B_l

    Cm = tl.load(
        C_ptr + b * s_C_b + grp * s_C_g + t0 * s_C_l + rows[:, None] * s_C_l + offs_n[None, :] * s_C_n,
        mask=mask_m[:, None] & mask_n[None, :], other=0.0,
    )
    cs_m = tl.load(cs_ptr + row + offs_m)
    # state term: exp(a_i) C_i S_in, with S_in^T [n, p] read from the carried states
    st = st_ptr + ((b * NCHUNK + c) * H + h) * P * N
    S_t = tl.load(st + offs_p[None, :] * N + offs_n[:, None], mask=mask_n[:, None] & mask_p[None, :], other=0.0)
    acc = _mm(Cm, S_t.to(Cm.dtype), DOT, PREC) * tl.exp(cs_m)[:, None]

    # intra-chunk term over key blocks up to this query block's last token
    k_hi = tl.minimum((mb + 1) * BLOCK_M, L - c * CHUNK)
    cb = cb_ptr + (b * NCHUNK + c) * G * CHUNK * CHUNK + grp * CHUNK * CHUNK
    for k0 in range(0, k_hi, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        offs_k = c * CHUNK + cols
        mask_k = offs_k < L
        if HAS_CB:
            scores = tl.load(cb + rows[:, None] * CHUNK + cols[None, :]).to(tl.float32)
        else:
            Bt = tl.load(
                B_c + cols[None, :] * s_B_l + offs_n[:, None] * s_B_n,
                mask=mask_k[None, :] & mask_n[:, None], other=0.0,
            )
            scores = _mm(Cm, Bt, DOT, PREC)  # [m, k]
        cs_k = tl.load(cs_ptr + row + offs_k)
        dt_k = tl.load(dt_ptr + row + offs_k)
        causal = offs_k[None, :] <= offs_m[:, None]
        w = tl.where(causal, scores * tl.exp(cs_m[:, None] - cs_k[None, :]), 0.0) * dt_k[None, :]
        xk = tl.load(
            x_c + cols[:, None] * s_x_l + offs_p[None, :] * s_x_p,
            mask=mask_k[:, None] & mask_p[None, :], other=0.0,
        )
        acc += _mm(w.to(xk.dtype), xk, DOT, PREC)

    mask_mp = mask_m[:, None] & mask_p[None, :]
    if HAS_D:
        xm = tl.load(x_c + rows[:, None] * s_x_l + offs_p[None, :] * s_x_p, mask=mask_mp, other=0.0)
        Dv = tl.load(D_ptr + h * s_D_h + offs_p * s_D_p, mask=mask_p, other=0.0).to(tl.float32)
        acc += xm.to(tl.float32) * Dv[None, :]
    if HAS_Z:
        zm = tl.load(
            z_ptr + b * s_z_b + h * s_z_h + t0 * s_z_l + rows[:, None] * s_z_l + offs_p[None, :] * s_z_p,
            mask=mask_mp, other=0.0,
        ).to(tl.float32)
        acc = acc * zm * tl.sigmoid(zm)
    out = out_ptr + b * s_o_b + h * s_o_h + t0 * s_o_l + rows[:, None] * s_o_l + offs_p[None, :] * s_o_p
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_mp)


def ssd_chunk_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    return_final_states: bool = False,
    config: SSDConfig | None = None,
):
    """Chunked SSD on the GPU; same arguments and results as :func:`.reference.ssd_chunk_scan`.

    Inputs are taken checked (see :func:`jrt_prompt.kernels.ssd.ssd_chunk_scan`).
    """
    cfg = config or DEFAULT_CONFIG
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    chunk = _chunk_len(chunk_size, cfg)
    nchunk = triton.cdiv(l, chunk)
    dev = x.device
    dot, prec = _dot_types(x.dtype)

    dt_buf = torch.empty((b, h, nchunk * chunk), device=dev, dtype=torch.float32)
    cs_buf = torch.empty_like(dt_buf)
    block_h = min(cfg.block_h, _pow2(h, 1))
    _dt_cumsum_kernel[(b * nchunk, triton.cdiv(h, block_h))](
        dt, A, dt_bias if dt_bias is not None else A, dt_buf, cs_buf,
        l, h, nchunk,
        dt.stride(0), dt.stride(1), dt.stride(2), A.stride(0),
        dt_bias.stride(0) if dt_bias is not None else 0,
        float(dt_limit[0]), float(dt_limit[1]),
        CHUNK=chunk, BLOCK_H=block_h, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
    )

    block_k = min(cfg.block_k, chunk)
    block_p = min(cfg.block_p, _pow2(p))
    block_ns = min(cfg.block_n, _pow2(n))
    pn_blocks = triton.cdiv(p, block_p) * triton.cdiv(n, block_ns)
    final = torch.empty((b, h, p, n), device=dev, dtype=torch.float32)
    init = initial_states
    s_init = init.stride() if init is not None else (0, 0, 0, 0)
    if cfg.fused_states:
        # chunk states and carry in one walk; the start states in the inputs' dtype (the output
        # kernel rounds them to it for its product anyway)
        states = torch.empty((b, nchunk, h, p, n), device=dev, dtype=x.dtype)
        _state_carry_kernel[(b * h, pn_blocks)](
            x, B, dt_buf, cs_buf, init if init is not None else final, states, final,
            l, h, p, n, nchunk, h // g,
            *x.stride(), *B.stride(), *s_init,
            CHUNK=chunk, BLOCK_K=block_k, BLOCK_P=block_p, BLOCK_N=block_ns,
            HAS_INIT=init is not None, DOT=dot, PREC=prec,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    else:
        states = torch.empty((b, nchunk, h, p, n), device=dev, dtype=torch.float32)
        _chunk_state_kernel[(b * h, nchunk, pn_blocks)](
            x, B, dt_buf, cs_buf, states,
            l, h, p, n, nchunk, h // g,
            *x.stride(), *B.stride(),
            CHUNK=chunk, BLOCK_K=block_k, BLOCK_P=block_p, BLOCK_N=block_ns, DOT=dot, PREC=prec,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        block = min(cfg.block_pass, _pow2(p * n))
        _state_pass_kernel[(b * h, triton.cdiv(p * n, block))](
            states, cs_buf, init if init is not None else final, final,
            h, p, n, nchunk,
            *s_init,
            CHUNK=chunk, BLOCK=block, HAS_INIT=init is not None, num_warps=cfg.pass_warps,
        )

    block_m = min(cfg.block_m, chunk)
    block_n = _pow2(n)
    if cfg.precompute_cb:
        # fp32, as the scores are before the decay and dt scale them (bf16 here doubles the rounding)
        cb = torch.empty((b, nchunk, g, chunk, chunk), device=dev, dtype=torch.float32)
        _chunk_cb_kernel[(nchunk * (chunk // block_m) ** 2, b * g)](
            B, C, cb,
            l, n, nchunk, g,
            *B.stride(), *C.stride(),
            CHUNK=chunk, BLOCK_M=block_m, BLOCK_N=min(block_n, cfg.block_n), DOT=dot, PREC=prec,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    else:
        cb = states  # not read

    out = torch.empty((b, l, h, p), device=dev, dtype=x.dtype)
    grid = (b * h, nchunk * (chunk // block_m), triton.cdiv(p, block_p))
    if D is not None:
        s_D = (D.stride(0), D.stride(1) if D.dim() == 2 else 0)
    else:
        s_D = (0, 0)
    _chunk_out_kernel[grid](
        x, B, C, z if z is not None else x, D if D is not None else A, dt_buf, cs_buf, states, cb, out,
        l, h, p, n, nchunk, h // g, g,
        *x.stride(), *B.stride(), *C.stride(),
        *(z.stride() if z is not None else (0, 0, 0, 0)),
        *s_D, *out.stride(),
        CHUNK=chunk, BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_P=block_p, BLOCK_N=block_n,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_CB=cfg.precompute_cb, DOT=dot, PREC=prec,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if return_final_states:
        return out, final
    return out


@triton.jit
def _step_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr,
    H, P, N, HG,
    s_s_b, s_s_h, s_s_p, s_s_n,
    s_x_b, s_x_h, s_x_p,
    s_dt_b, s_dt_h, s_dt_p,
    s_A_h, s_A_p, s_A_n,
    s_B_b, s_B_g, s_B_n,
    s_C_b, s_C_g, s_C_n,
    s_D_h, s_D_p,
    s_z_b, s_z_h, s_z_p,
    s_bias_h, s_bias_p,
    s_o_b, s_o_h, s_o_p,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    bh = tl.program_id(0)
    b = (bh // H).to(tl.int64)
    h = bh % H
    grp = h // HG
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_p = offs_p < P
    mask_n = offs_n < N
    mask = mask_p[:, None] & mask_n[None, :]

    x = tl.load(x_ptr + b * s_x_b + h * s_x_h + offs_p * s_x_p, mask=mask_p, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + b * s_dt_b + h * s_dt_h + offs_p * s_dt_p, mask=mask_p, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + h * s_bias_h + offs_p * s_bias_p, mask=mask_p, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
    A = tl.load(A_ptr + h * s_A_h + offs_p[:, None] * s_A_p + offs_n[None, :] * s_A_n, mask=mask, other=0.0)
    Bv = tl.load(B_ptr + b * s_B_b + grp * s_B_g + offs_n * s_B_n, mask=mask_n, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * s_C_b + grp * s_C_g + offs_n * s_C_n, mask=mask_n, other=0.0).to(tl.float32)
    s_ptrs = state_ptr + b * s_s_b + h * s_s_h + offs_p[:, None] * s_s_p + offs_n[None, :] * s_s_n
    s = tl.load(s_ptrs, mask=mask, other=0.0).to(tl.float32)
    s = s * tl.exp(dt[:, None] * A.to(tl.float32)) + (dt * x)[:, None] * Bv[None, :]
    tl.store(s_ptrs, s.to(state_ptr.dtype.element_ty), mask=mask)
    y = tl.sum(s * Cv[None, :], axis=1)
    if HAS_D:
        y += x * tl.load(D_ptr + h * s_D_h + offs_p * s_D_p, mask=mask_p, other=0.0).to(tl.float32)
    if HAS_Z:
        zv = tl.load(z_ptr + b * s_z_b + h * s_z_h + offs_p * s_z_p, mask=mask_p, other=0.0).to(tl.float32)
        y = y * zv * tl.sigmoid(zv)
    tl.store(out_ptr + b * s_o_b + h * s_o_h + offs_p * s_o_p, y.to(out_ptr.dtype.element_ty), mask=mask_p)


def ssd_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    block_p: int = 16,
    num_warps: int = 4,
) -> torch.Tensor:
    """One fused step; same arguments and results as :func:`.reference.ssd_state_update`."""
    b, h, p = x.shape
    g, n = B.shape[1], B.shape[2]
    out = torch.empty((b, h, p), device=x.device, dtype=x.dtype)
    block_p = min(block_p, _pow2(p, 1))
    zero2, zero3 = (0, 0), (0, 0, 0)
    _step_kernel[(b * h, triton.cdiv(p, block_p))](
        state, x, dt, A, B, C,
        D if D is not None else A, z if z is not None else x, dt_bias if dt_bias is not None else A, out,
        h, p, n, h // g,
        *state.stride(), *x.stride(), *dt.stride(), *A.stride(), *B.stride(), *C.stride(),
        *(D.stride() if D is not None else zero2),
        *(z.stride() if z is not None else zero3),
        *(dt_bias.stride() if dt_bias is not None else zero2),
        *out.stride(),
        BLOCK_P=block_p, BLOCK_N=_pow2(n, 1),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
        num_warps=num_warps,
    )
    return out
