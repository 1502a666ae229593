"""Triton kernels for Based (Taylor) linear attention, prefix linear attention and the decode step.

Algorithm of the prefill kernel (one program per (block of value columns, batch*head[, segment])):
walk the sequence in chunks of BT tokens while holding the running state in registers, split by
feature order — s0 [dv] (constant feature), the linear and diagonal-square rows [2f, dv], the
f(f-1)/2 pair rows i < j [128 for f=16, dv] (the quadratic features are symmetric, so the
256 products k_i k_j collapse to 136 distinct ones) — all fp32. The normaliser (z0, z1 [f],
Z2 [f, f], fp32) runs as its own pass before it (_normaliser_kernel: many short programs over
blocks of tokens, exact tensor-core products), and the prefill kernel reads each token's
denominator; ``ChunkConfig(normaliser_block=0)`` carries it inside the walk instead (its two
small products per chunk as split bf16 tensor-core products, _split_dot), which measured slower
because those products sit on the walk's serial path. Inside a chunk the scores
are the polynomial 1 + s + s^2/2 of s = q·k/sqrt(f) (a [BT, BT] tile; the 273 features are
never built for pairs of tokens); across chunks the query features meet the state. Only the
state is ever expanded; the 273-row layout of :class:`LinearAttentionState` is read and written
at the ends.

Prefix linear attention runs the same kernel twice: first as a pure reduction over the encoder
tokens (parallel over token splits, partial states summed), then as the causal pass starting
from that encoder state — which is exactly the cross term of PLA with its shared normaliser.
The causal pass's normaliser needs only the encoder's normaliser, so on a GPU the encoder
reduction runs on a side stream beside the normaliser passes (from SIDE_STREAM_MIN_TOKENS).
For small batch x heads the causal pass is cut into sequence segments that run in parallel from
prefix-summed segment states. The decode step is one fused kernel per token (see
_step_sym_kernel). Measured figures: docs/benchmarks.md.

The default, ``ChunkConfig(pairs="cyclic")``, runs this algorithm with the pair rows grouped by
cyclic distance (_chunked_cyclic_kernel): ten [dv, f] state tiles and [BT, f] temporaries instead
of a [128, dv] pair tile and [BT, 128] one-hot expansions (``pairs="onehot"``, _chunked_kernel),
for lower register pressure. Same states in and out.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import reference
from .state import LinearAttentionState

INV_SQRT2 = 1.0 / math.sqrt(2.0)


@dataclass(frozen=True)
class ChunkConfig:
    """Launch parameters of the chunked kernel (tuned on an H200 by `jrt bench prefill --tune`)."""

    chunk: int = 64
    block_dv: int = 64
    num_warps: int = 4
    num_stages: int = 2
    symmetric: bool = True  # work on the f(f+1)/2 distinct quadratic features (see the kernel)
    segments: int = 0  # >1: cut the sequence into this many parallel segments; 0: pick from the shape
    maxnreg: int = 0  # >0: cap registers per thread (more programs per SM, more spills)
    # Order of the pair features i < j when symmetric=True and f=16: "onehot" (_chunked_kernel:
    # one [pairs, dv] tile, features by one-hot selection products) or "cyclic"
    # (_chunked_cyclic_kernel: eight [f, dv] tiles grouped by cyclic distance, partners by a
    # one-hot [f, f] product). Same results and states; "cyclic" measured 5% faster on an H200
    # (docs/benchmarks.md). Other shapes run the one-hot kernel.
    pairs: str = "cyclic"
    # Half-precision inputs, cyclic kernel: take the normaliser's fp32 products as split bf16
    # products on the tensor cores (_split_dot) instead of fp32 products on the CUDA cores (3%
    # faster, 11% in the encoder pass; the one-hot kernel spills more with it and measured 1.9x
    # slower, so it keeps fp32 products). fp32 inputs always take exact fp32 products.
    split_normaliser: bool = True
    # >0: the normaliser runs as its own parallel pass (_normaliser_kernel, blocks of this many
    # tokens) and the prefill kernels only read its denominators; 0: the prefill kernels carry it
    # through their walk over the sequence (split_normaliser then applies).
    normaliser_block: int = 1024
    normaliser_warps: int = 1


PAIR_LAYOUTS = ("onehot", "cyclic")


# 3 pipeline stages for the chunk loads: tuned on an H200 with the normaliser pass (Based 32k x 16:
# 3.76 ms against 3.85 ms at 2 stages with the same pass; docs/benchmarks.md, eighth run)
DEFAULT_CONFIG = ChunkConfig(num_stages=3)
# chunk of _normaliser_kernel (its blocks are multiples of it): one compiled shape whatever the
# prefill kernel's chunk, since a token's denominator does not depend on the chunking
NORMALISER_CHUNK = 64
NORMALISER_SUMS_CHUNK = 256
# PLA's encoder reduction has no queries and no [chunk, chunk] scores, so it takes a larger chunk
# (tuned separately: `jrt bench prefill --tune`, docs/benchmarks.md)
DEFAULT_ENCODER_CONFIG = ChunkConfig(chunk=128, num_stages=3)


@dataclass(frozen=True)
class StepConfig:
    """Launch parameters of the decode-step kernel: state rows per block, warps per program."""

    block_r: int = 32
    num_warps: int = 1
    symmetric: bool = True  # read each symmetric pair of quadratic rows once (_step_sym_kernel)


DEFAULT_STEP_CONFIG = StepConfig()


@triton.jit
def _token_range(pid_split, tokens_per_split, N, enc_len_ptr, b, HAS_ENC_LEN: tl.constexpr):
    """Tokens [t_begin, t_end) of this program's split, cut at the row's encoder length."""
    t_begin = pid_split * tokens_per_split
    t_end = tl.minimum(N, t_begin + tokens_per_split)
    if HAS_ENC_LEN:
        t_end = tl.minimum(t_end, tl.load(enc_len_ptr + b).to(tl.int32))
    return t_begin, t_end


@triton.jit
def _load_keys(
    t0, t_end, offs_t, offs_f, k_ptr, mask_ptr, b, N, H, qk_base, F: tl.constexpr, HAS_MASK: tl.constexpr
):
    """Positions, validity, key weights (0 for padding and masked tokens), q/k offsets and k of
    the chunk starting at t0."""
    t = t0 + offs_t
    t_ok = t < t_end
    w = t_ok.to(tl.float32)
    if HAS_MASK:
        w = w * tl.load(mask_ptr + b.to(tl.int64) * N + t, mask=t_ok, other=0).to(tl.float32)
    tok = qk_base + t * (H * F)
    k = tl.load(k_ptr + tok[:, None] + offs_f[None, :], mask=t_ok[:, None], other=0.0)
    return t, t_ok, w, tok, k


@triton.jit
def _load_chunk(
    t0,
    t_end,
    offs_t,
    offs_f,
    offs_dv,
    dv_mask,
    k_ptr,
    v_ptr,
    mask_ptr,
    b,
    N,
    H,
    DV,
    qk_base,
    v_base,
    F: tl.constexpr,
    HAS_MASK: tl.constexpr,
):
    """Positions, validity, key weights (0 for padding and masked tokens), q/k offsets, k and v
    of the chunk starting at t0."""
    t, t_ok, w, tok, k = _load_keys(t0, t_end, offs_t, offs_f, k_ptr, mask_ptr, b, N, H, qk_base, F, HAS_MASK)
    v = tl.load(
        v_ptr + v_base + t[:, None] * (H * DV) + offs_dv[None, :],
        mask=t_ok[:, None] & dv_mask[None, :],
        other=0.0,
    )
    return t, t_ok, w, tok, k, v


@triton.jit
def _intra_chunk(qs, ks, v, w, offs_t, dtype: tl.constexpr, PRECISION: tl.constexpr):
    """Numerator [BT, dv] and normaliser [BT] within the chunk: scores 1 + s + s^2/2 of
    s = q.k / sqrt(f) (the Taylor features' inner product), causal, masked keys removed."""
    s = tl.dot(qs.to(dtype), tl.trans(ks.to(dtype)), input_precision=PRECISION)
    a = 1.0 + s + 0.5 * s * s
    a = tl.where(offs_t[:, None] >= offs_t[None, :], a, 0.0) * w[None, :]
    num = tl.dot(a.to(dtype), v.to(dtype), input_precision=PRECISION)
    return num, tl.sum(a, 1)


@triton.jit
def _normaliser_start(
    ks_in_ptr,
    pid_split,
    in_split_stride_ks,
    zs_base,
    offs_f,
    F: tl.constexpr,
    BT: tl.constexpr,
    HAS_INIT: tl.constexpr,
):
    """The normaliser's running sums (fp32): z0 (constant feature), z1 [F] (linear), and the
    quadratic part as an F x F matrix Z2 (Z2[i, j] = sum_t k_i k_j / sqrt2), whose read-out
    q^T Z2 q is two tiny products. From the initial state's 273-entry ksum, or zero."""
    if HAS_INIT:
        ks_in = ks_in_ptr + tl.cast(pid_split, tl.int64) * in_split_stride_ks + zs_base
        z0 = tl.load(ks_in)
        z1 = tl.load(ks_in + 1 + offs_f)
        z2 = tl.load(ks_in + 1 + F + offs_f[:, None] * F + offs_f[None, :])
    else:
        z0 = tl.sum(tl.zeros([BT], dtype=tl.float32), 0)
        z1 = tl.zeros([F], dtype=tl.float32)
        z2 = tl.zeros([F, F], dtype=tl.float32)
    return z0, z1, z2


@triton.jit
def _split_dot(a, b, acc, SPLIT: tl.constexpr, SPLIT_DTYPE: tl.constexpr, A_EXACT: tl.constexpr = False):
    """acc + a @ b for fp32 a, b, to fp32-level accuracy. SPLIT: on the tensor cores, each operand
    as hi + lo in SPLIT_DTYPE (bf16: 8 + 8 mantissa bits, fp32's range), three products with the
    lo @ lo term dropped (relative error ~2^-16 per product; exact when the operands are bf16 or
    fp16 values, as the scaled keys and queries of half-precision inputs are). Otherwise one
    "ieee" fp32 product on the CUDA cores, with layout round trips through shared memory for
    these [.., 16] x [16, ..] shapes: the split form measured 3% faster for the causal pass and
    11% for the encoder pass (docs/benchmarks.md)."""
    if SPLIT:
        # A_EXACT: a's values are SPLIT_DTYPE values (a_lo = 0), two products suffice
        a_hi = a.to(SPLIT_DTYPE)
        b_hi = b.to(SPLIT_DTYPE)
        b_lo = (b - b_hi.to(tl.float32)).to(SPLIT_DTYPE)
        if not A_EXACT:
            a_lo = (a - a_hi.to(tl.float32)).to(SPLIT_DTYPE)
            acc = tl.dot(a_lo, b_hi, acc)
        acc = tl.dot(a_hi, b_lo, acc)
        return tl.dot(a_hi, b_hi, acc)
    else:
        return tl.dot(a, b, acc, input_precision="ieee")


@triton.jit
def _normaliser_read(den, qs, z0, z1, z2, SPLIT: tl.constexpr, SPLIT_DTYPE: tl.constexpr):
    """den [BT] plus phi(q) . (normaliser of all earlier tokens); qs = q / f^(1/4)."""
    qz2 = _split_dot(qs, z2, tl.zeros(qs.shape, tl.float32), SPLIT, SPLIT_DTYPE) * 0.7071067811865476
    return den + z0 + tl.sum(qs * (z1[None, :] + qz2), 1)


@triton.jit
def _denominator(
    den,
    qs,
    z0,
    z1,
    z2,
    den_ptr,
    pid_bh,
    N,
    t,
    t_ok,
    NORM_INLINE: tl.constexpr,
    NORM_SPLIT: tl.constexpr,
    NORM_DTYPE: tl.constexpr,
):
    """The chunk's denominators [BT]: the intra-chunk part den plus the carried normaliser's
    read-out (NORM_INLINE), or read from den [b*h, N] of _normaliser_kernel (den is then unused)."""
    if NORM_INLINE:
        return _normaliser_read(den, qs, z0, z1, z2, NORM_SPLIT, NORM_DTYPE)
    else:
        return tl.load(den_ptr + pid_bh.to(tl.int64) * N + t, mask=t_ok, other=1.0)


@triton.jit
def _normaliser_update(z0, z1, z2, ks, w, SPLIT: tl.constexpr, SPLIT_DTYPE: tl.constexpr):
    """Add the chunk's weighted keys (ks = k / f^(1/4) [BT, F], weights w [BT])."""
    kw = tl.trans(ks) * w[None, :]
    z2 = _split_dot(kw * 0.7071067811865476, ks, z2, SPLIT, SPLIT_DTYPE)
    return z0 + tl.sum(w, 0), z1 + tl.sum(kw, 1), z2


@triton.jit
def _normaliser_store(
    ks_out_ptr, pid_split, out_split_stride_ks, zs_base, z0, z1, z2, offs_f, F: tl.constexpr
):
    """Write the normaliser in the 273-entry layout (Z2 as the f*f quadratic entries)."""
    out_ks = ks_out_ptr + tl.cast(pid_split, tl.int64) * out_split_stride_ks + zs_base
    tl.store(out_ks, z0)
    tl.store(out_ks + 1 + offs_f, z1)
    tl.store(out_ks + 1 + F + offs_f[:, None] * F + offs_f[None, :], z2)


@triton.jit
def _normaliser_kernel(
    q_ptr,
    k_ptr,
    mask_ptr,
    enc_len_ptr,
    zs_in_ptr,
    sums_ptr,
    zs_out_ptr,
    den_ptr,
    N,
    H,
    tokens_per_block,
    block_stride_zs,
    scale1,
    F: tl.constexpr,
    BT: tl.constexpr,
    WRITE_DEN: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_ENC_LEN: tl.constexpr,
    HAS_INIT: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    SPLIT: tl.constexpr,
    SPLIT_DTYPE: tl.constexpr,
    Q_EXACT: tl.constexpr,
):
    """The normaliser on its own, one program per (batch*head, block of tokens_per_block tokens).

    WRITE_DEN=False: the block's sum of phi(k) (273-entry layout) into sums [block, b*h, 273].
    WRITE_DEN=True: from the initial normaliser zs_in [b*h, 273] (HAS_INIT) plus the sums of the
    earlier blocks (read from sums: a few kB per program, no separate prefix-sum launch), the
    denominator phi(q_t) . sum_{j<=t} phi(k_j) of every token into den [b*h, N] (fp32); the last
    block's program writes the total (init + every token) into zs_out [b*h, 273].

    The prefill kernels take den from here (NORM_INLINE=False) instead of carrying the
    normaliser through their serial walk over the sequence: these programs are many and short
    (blocks run in parallel), so the normaliser leaves the prefill's critical path.

    Z2 is kept as sum k_i k_j of the scaled keys (no 1/sqrt2), so for half-precision inputs both
    operands of its update are input-dtype values: one tensor-core product with fp32 accumulation
    is exact. Its read-out q^T Z2 q takes Z2 split into hi + lo (SPLIT, see _split_dot): two
    products when the queries are SPLIT_DTYPE values (Q_EXACT, bf16 inputs), three otherwise.
    fp32 inputs: "ieee" products throughout.
    """
    pid_bh = tl.program_id(0)
    blk = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_f = tl.arange(0, F)
    offs_t = tl.arange(0, BT)
    qk_base = b.to(tl.int64) * N * H * F + h * F
    zs_base = pid_bh.to(tl.int64) * (1 + F + F * F)
    z0, z1, z2 = _normaliser_start(zs_in_ptr, 0, 0, zs_base, offs_f, F, BT, HAS_INIT)
    if WRITE_DEN:
        for j in range(0, blk):
            y0, y1, y2 = _normaliser_start(sums_ptr, j, block_stride_zs, zs_base, offs_f, F, BT, True)
            z0 += y0
            z1 += y1
            z2 += y2
    z2 = z2 * 1.4142135623730951  # the 273-entry layout holds sum k_i k_j / sqrt2
    t_begin, t_end = _token_range(blk, tokens_per_block, N, enc_len_ptr, b, HAS_ENC_LEN)
    for t0 in range(t_begin, t_end, BT):
        t, t_ok, w, tok, k = _load_keys(
            t0, t_end, offs_t, offs_f, k_ptr, mask_ptr, b, N, H, qk_base, F, HAS_MASK
        )
        ks = k.to(tl.float32) * scale1
        if WRITE_DEN:
            qs = tl.load(q_ptr + tok[:, None] + offs_f[None, :], mask=t_ok[:, None], other=0.0).to(tl.float32)
            qs = qs * scale1
            # the same scores as _intra_chunk's (same operands, same products), row sums only
            s = tl.dot(qs.to(DOT_DTYPE), tl.trans(ks.to(DOT_DTYPE)), input_precision=PRECISION)
            a = 1.0 + s + 0.5 * s * s
            a = tl.where(offs_t[:, None] >= offs_t[None, :], a, 0.0) * w[None, :]
            qz2 = _split_dot(qs, z2, tl.zeros([BT, F], tl.float32), SPLIT, SPLIT_DTYPE, Q_EXACT)
            den = tl.sum(a, 1) + z0 + tl.sum(qs * (z1[None, :] + 0.5 * qz2), 1)
            tl.store(den_ptr + pid_bh.to(tl.int64) * N + t, den, mask=t_ok)
        kw = ks * w[:, None]  # w is 0 or 1: still an input-dtype value
        z2 = tl.dot(tl.trans(kw.to(DOT_DTYPE)), ks.to(DOT_DTYPE), z2, input_precision=PRECISION)
        z1 = z1 + tl.sum(kw, 0)
        z0 = z0 + tl.sum(w, 0)
    z2 = z2 * 0.7071067811865476
    if WRITE_DEN:
        if blk == tl.num_programs(1) - 1:
            _normaliser_store(zs_out_ptr, 0, 0, zs_base, z0, z1, z2, offs_f, F)
    else:
        _normaliser_store(sums_ptr, blk, block_stride_zs, zs_base, z0, z1, z2, offs_f, F)


@triton.jit
def _chunked_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    mask_ptr,
    enc_len_ptr,
    kv_in_ptr,
    ks_in_ptr,
    kv_out_ptr,
    ks_out_ptr,
    den_ptr,
    pair_i_ptr,
    pair_j_ptr,
    N,
    H,
    DV,
    tokens_per_split,
    in_split_stride_kv,
    in_split_stride_ks,
    out_split_stride_kv,
    out_split_stride_ks,
    eps,
    scale1,
    F: tl.constexpr,
    BT: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    NP: tl.constexpr,
    WRITE_OUTPUT: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_ENC_LEN: tl.constexpr,
    HAS_INIT: tl.constexpr,
    STORE_STATE: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    STATE_DTYPE: tl.constexpr,
    SYM: tl.constexpr,
    NORM_SPLIT: tl.constexpr,
    NORM_DTYPE: tl.constexpr,
    NORM_INLINE: tl.constexpr,
):
    """Chunked Based attention over tokens [split * tokens_per_split, ...) of one (batch, head).

    WRITE_OUTPUT=False turns it into a pure state reduction (encoder pass, segment pass).

    SYM=True uses that the quadratic features are symmetric: q_i q_j k_i k_j appears twice for
    i != j, so the kernel works on the f diagonal terms plus the f(f-1)/2 pairs i < j (120 for
    f=16, padded to NP=128) instead of all f*f = 256 products — 40% fewer products and a smaller
    state. Reading a state in, pair (i, j) takes S_ij + S_ji, which is exact for any state;
    writing it out gives both rows the same value, the form every state of these ops has.
    """
    pid_dv = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_split = tl.program_id(2)
    b = pid_bh // H
    h = pid_bh % H
    FEAT: tl.constexpr = 1 + F + F * F
    R2: tl.constexpr = 0.7071067811865476  # 1/sqrt(2) of the quadratic features
    if SYM:
        NL: tl.constexpr = 2 * F  # linear features, then the diagonal squares
        NQ: tl.constexpr = NP  # pairs i < j (padded)
    else:
        NL: tl.constexpr = F
        NQ: tl.constexpr = F * F

    offs_f = tl.arange(0, F)
    offs_l = tl.arange(0, NL)
    offs_q = tl.arange(0, NQ)
    offs_t = tl.arange(0, BT)
    offs_dv = pid_dv * BLOCK_DV + tl.arange(0, BLOCK_DV)
    dv_mask = offs_dv < DV
    # int64 bases: b * N * H * DV overflows int32 at 64k tokens x batch 16 x 16 heads x 64.
    qk_base = b.to(tl.int64) * N * H * F + h * F
    v_base = b.to(tl.int64) * N * H * DV + h * DV
    st_base = pid_bh.to(tl.int64) * FEAT * DV
    zs_base = pid_bh.to(tl.int64) * FEAT
    dtype = DOT_DTYPE  # operand type of the tensor-core products (the input dtype on a GPU)

    # Row of the 273-feature layout for each internal state row.
    if SYM:
        feat_l = offs_l % F  # which input component a linear/diagonal row uses
        is_diag = offs_l >= F
        row_l = tl.where(is_diag, 1 + F + feat_l * (F + 1), 1 + feat_l)
        pi = tl.load(pair_i_ptr + offs_q)
        pj = tl.load(pair_j_ptr + offs_q)
        p_ok = pi != pj  # padding pairs are (0, 0)
        row_q = 1 + F + pi * F + pj
        row_q_mirror = 1 + F + pj * F + pi
        # one-hot selection matrices; padding pairs select nothing, so their features are 0
        sel_l = (feat_l[:, None] == offs_f[None, :]).to(dtype)  # [NL, F]
        sel_i = ((pi[:, None] == offs_f[None, :]) & p_ok[:, None]).to(dtype)  # [NQ, F]
        sel_j = ((pj[:, None] == offs_f[None, :]) & p_ok[:, None]).to(dtype)
        sel_l_t = tl.trans(sel_l)
        sel_i_t = tl.trans(sel_i)
        sel_j_t = tl.trans(sel_j)
    else:
        feat_l = offs_l
        row_l = 1 + offs_l
        row_q = 1 + F + offs_q

    # Running state (fp32): s0 [dv] constant feature, sl [NL, dv] linear (+ diagonal) rows,
    # sq [NQ, dv] quadratic rows; the normaliser as in _normaliser_start.
    if HAS_INIT:
        kv_in = kv_in_ptr + pid_split.to(tl.int64) * in_split_stride_kv + st_base
        s0 = tl.load(kv_in + offs_dv, mask=dv_mask, other=0.0)
        sl = tl.load(kv_in + row_l[:, None] * DV + offs_dv[None, :], mask=dv_mask[None, :], other=0.0)
        if SYM:
            m = p_ok[:, None] & dv_mask[None, :]
            sq = tl.load(kv_in + row_q[:, None] * DV + offs_dv[None, :], mask=m, other=0.0)
            sq = (sq + tl.load(kv_in + row_q_mirror[:, None] * DV + offs_dv[None, :], mask=m, other=0.0)) * R2
        else:
            sq = tl.load(kv_in + row_q[:, None] * DV + offs_dv[None, :], mask=dv_mask[None, :], other=0.0)
    else:
        s0 = tl.zeros([BLOCK_DV], dtype=tl.float32)
        sl = tl.zeros([NL, BLOCK_DV], dtype=tl.float32)
        sq = tl.zeros([NQ, BLOCK_DV], dtype=tl.float32)
    # without NORM_INLINE the denominators come from _normaliser_kernel and z stays unused
    # fmt: off
    z0, z1, z2 = _normaliser_start(ks_in_ptr, pid_split, in_split_stride_ks, zs_base, offs_f, F, BT,
                                   HAS_INIT and NORM_INLINE)
    # fmt: on

    t_begin, t_end = _token_range(pid_split, tokens_per_split, N, enc_len_ptr, b, HAS_ENC_LEN)

    for t0 in range(t_begin, t_end, BT):
        # fmt: off
        t, t_ok, w, tok, k, v = _load_chunk(t0, t_end, offs_t, offs_f, offs_dv, dv_mask, k_ptr, v_ptr,
                                            mask_ptr, b, N, H, DV, qk_base, v_base, F, HAS_MASK)
        # fmt: on
        ks = k.to(tl.float32) * scale1  # phi's linear part: k / f^(1/4)
        if WRITE_OUTPUT:
            q = tl.load(q_ptr + tok[:, None] + offs_f[None, :], mask=t_ok[:, None], other=0.0)
            qs = q.to(tl.float32) * scale1
            num, den = _intra_chunk(qs, ks, v, w, offs_t, dtype, PRECISION)
            # Inter-chunk: query features against the state of all earlier tokens.
            if SYM:
                # Expand q by one-hot selection products on the tensor cores: no reshapes, no
                # gathers, and the tiles come out in the accumulator layout the next product takes.
                ql = tl.dot(q.to(dtype), sel_l_t, input_precision=PRECISION) * scale1  # [BT, NL]
                ql = tl.where(is_diag[None, :], ql * ql * R2, ql)
                qa = tl.dot(q.to(dtype), sel_i_t, input_precision=PRECISION)  # [BT, NQ]: q_i
                qb = tl.dot(q.to(dtype), sel_j_t, input_precision=PRECISION)  # q_j
                qq = qa * qb * (scale1 * scale1)
            else:
                ql = qs
                qq = tl.reshape(qs[:, :, None] * qs[:, None, :], [BT, F * F]) * R2
            num = num + s0[None, :]
            # the state enters the read-out products as STATE_DTYPE: the input dtype, except fp32
            # (tf32 products) for fp16 inputs, whose range a long sequence's sums can exceed
            num = tl.dot(ql.to(STATE_DTYPE), sl.to(STATE_DTYPE), num, input_precision=PRECISION)
            num = tl.dot(qq.to(STATE_DTYPE), sq.to(STATE_DTYPE), num, input_precision=PRECISION)
            # fmt: off
            den = _denominator(den, qs, z0, z1, z2, den_ptr, pid_bh, N, t, t_ok,
                               NORM_INLINE, NORM_SPLIT, NORM_DTYPE)
            # fmt: on
            o = num / (den[:, None] + eps) * w[:, None]
            tl.store(
                o_ptr + v_base + t[:, None] * (H * DV) + offs_dv[None, :],
                o.to(o_ptr.dtype.element_ty),
                mask=t_ok[:, None] & dv_mask[None, :],
            )
        # State update with this chunk's (weighted) keys and values.
        vw = (v.to(tl.float32) * w[:, None]).to(dtype)
        kst = tl.trans(ks)  # [F, BT]
        if SYM:
            kt = tl.trans(k.to(dtype))  # [F, BT]
            kl = tl.dot(sel_l, kt, input_precision=PRECISION) * scale1  # [NL, BT]
            kl = tl.where(is_diag[:, None], kl * kl * R2, kl)
            ka = tl.dot(sel_i, kt, input_precision=PRECISION)  # [NQ, BT]: k_i (padding rows 0)
            kb = tl.dot(sel_j, kt, input_precision=PRECISION)
            kq = ka * kb * (scale1 * scale1)
        else:
            kl = kst
            kq = tl.reshape(kst[:, None, :] * kst[None, :, :], [F * F, BT]) * R2
        s0 = s0 + tl.sum(vw.to(tl.float32), 0)
        sl = tl.dot(kl.to(dtype), vw, sl, input_precision=PRECISION)
        sq = tl.dot(kq.to(dtype), vw, sq, input_precision=PRECISION)
        if NORM_INLINE:
            z0, z1, z2 = _normaliser_update(z0, z1, z2, ks, w, NORM_SPLIT, NORM_DTYPE)

    if STORE_STATE:
        out_kv = kv_out_ptr + pid_split.to(tl.int64) * out_split_stride_kv + st_base
        tl.store(out_kv + offs_dv, s0, mask=dv_mask)
        tl.store(out_kv + row_l[:, None] * DV + offs_dv[None, :], sl, mask=dv_mask[None, :])
        if SYM:
            m = p_ok[:, None] & dv_mask[None, :]
            tl.store(out_kv + row_q[:, None] * DV + offs_dv[None, :], sq * R2, mask=m)
            tl.store(out_kv + row_q_mirror[:, None] * DV + offs_dv[None, :], sq * R2, mask=m)
        else:
            tl.store(out_kv + row_q[:, None] * DV + offs_dv[None, :], sq, mask=dv_mask[None, :])
        if NORM_INLINE:
            if pid_dv == 0:
                _normaliser_store(ks_out_ptr, pid_split, out_split_stride_ks, zs_base, z0, z1, z2, offs_f, F)


# ---------------------------------------------------------------------------------------------
# Cyclic pair layout (ChunkConfig.pairs = "cyclic")
# ---------------------------------------------------------------------------------------------
#
# The 120 pairs i < j of f = 16 features are grouped by cyclic distance d: group d = 1..7 is the
# 16 pairs (i, (i + d) mod 16), group 8 the 8 pairs (i, i + 8), i < 8, held as a 16-row group
# whose rows i >= 8 are always zero. A group's query features are one [BT, 16] tile
# q * q[:, (i + d) mod 16], so the state is ten [BLOCK_DV, 16] fp32 tiles (linear, diagonal,
# eight pair groups) and every temporary is [BT, 16] instead of the [BT, 128] pair expansion of
# the one-hot layout. The state holds exactly what the SYM rows of _chunked_kernel hold (pair
# (i, j) carries k_i k_j / f^(1/2) with no 1/sqrt2), only in another row order.


@triton.jit
def _cyc_partner(D: tl.constexpr, F: tl.constexpr, dtype: tl.constexpr):
    """One-hot [F, F] matrix P with (x @ P)[:, i] = x[:, (i + D) mod F]. In the half group
    D = F/2 the columns i >= D select nothing, so each of its pairs is counted once."""
    r = tl.arange(0, F)[:, None]
    c = tl.arange(0, F)[None, :]
    sel = r == (c + D) % F
    if 2 * D == F:
        sel = sel & (c < D)
    return sel.to(dtype)


@triton.jit
def _cyc_rows(D: tl.constexpr, F: tl.constexpr):
    """Rows of pair group D in the 273-row layout: (i, j), its mirror (j, i), and which rows exist."""
    i = tl.arange(0, F)
    j = (i + D) % F
    if 2 * D == F:
        ok = i < D
    else:
        ok = i < F
    return 1 + F + i * F + j, 1 + F + j * F + i, ok


@triton.jit
def _cyc_load(kv_in, D: tl.constexpr, F: tl.constexpr, offs_dv, dv_mask, DV):
    # [BLOCK_DV, F] tile of group D (the state is held transposed, see _chunked_cyclic_kernel):
    # (S_ij + S_ji) / sqrt2, exact for any state, symmetric or not (as the SYM path reads it)
    row, mirror, ok = _cyc_rows(D, F)
    m = dv_mask[:, None] & ok[None, :]
    s = tl.load(kv_in + row[None, :] * DV + offs_dv[:, None], mask=m, other=0.0).to(tl.float32)
    s += tl.load(kv_in + mirror[None, :] * DV + offs_dv[:, None], mask=m, other=0.0).to(tl.float32)
    return s * 0.7071067811865476


@triton.jit
def _cyc_store(out_kv, s, D: tl.constexpr, F: tl.constexpr, offs_dv, dv_mask, DV):
    # both rows of the pair get S / sqrt2; the half group's empty rows i >= F/2 are not stored
    # (they would alias rows i - F/2 of the same group)
    row, mirror, ok = _cyc_rows(D, F)
    m = dv_mask[:, None] & ok[None, :]
    s = s * 0.7071067811865476
    tl.store(out_kv + row[None, :] * DV + offs_dv[:, None], s, mask=m)
    tl.store(out_kv + mirror[None, :] * DV + offs_dv[:, None], s, mask=m)


@triton.jit
def _cyc_group(
    num,
    s,
    qd,
    qs,
    kd,
    ks,
    vw_t,
    scale1,
    D: tl.constexpr,
    F: tl.constexpr,
    WRITE_OUTPUT: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    STATE_DTYPE: tl.constexpr,
):
    """One chunk for pair group D: read-out of the state of earlier tokens into num [BT, dv],
    then s [dv, F] += vw^T @ (pair features of the chunk's keys). Returns (num, s)."""
    if WRITE_OUTPUT:
        # a one-hot product on the tensor cores: exact (one nonzero term per output)
        qp = tl.dot(qd, _cyc_partner(D, F, DOT_DTYPE), input_precision=PRECISION)
        qq = qs * qp * scale1  # [BT, F]: q_i q_(i+D) / f^(1/2)
        num = tl.dot(qq.to(STATE_DTYPE), tl.trans(s.to(STATE_DTYPE)), num, input_precision=PRECISION)
    kp = tl.dot(kd, _cyc_partner(D, F, DOT_DTYPE), input_precision=PRECISION)  # [BT, F]
    kq = ks * kp * scale1
    s = tl.dot(vw_t, kq.to(DOT_DTYPE), s, input_precision=PRECISION)
    return num, s


@triton.jit
def _chunked_cyclic_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    mask_ptr,
    enc_len_ptr,
    kv_in_ptr,
    ks_in_ptr,
    kv_out_ptr,
    ks_out_ptr,
    den_ptr,
    N,
    H,
    DV,
    tokens_per_split,
    in_split_stride_kv,
    in_split_stride_ks,
    out_split_stride_kv,
    out_split_stride_ks,
    eps,
    scale1,
    F: tl.constexpr,
    BT: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    WRITE_OUTPUT: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_ENC_LEN: tl.constexpr,
    HAS_INIT: tl.constexpr,
    STORE_STATE: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    STATE_DTYPE: tl.constexpr,
    NORM_SPLIT: tl.constexpr,
    NORM_DTYPE: tl.constexpr,
    NORM_INLINE: tl.constexpr,
):
    """_chunked_kernel (SYM) with the pair rows in the cyclic layout: same arguments, same
    results, same 273-row states in and out; the state is ten [BLOCK_DV, F] register tiles.

    The tiles are held transposed (value columns first): the update vw^T @ features then has
    M = BLOCK_DV (64), which Hopper's warpgroup MMA needs, with both operands in shared memory
    (vw is stored there for the intra-chunk product anyway). With [F, BLOCK_DV] tiles (M = 16)
    the update fell back to register-operand MMAs, and ptxas (sm_90a, bf16, 4 warps) reported
    ~1.2 kB of spill stores instead of ~0.4 kB.

    The partner tile x[:, (i + d) mod F] is a one-hot [F, F] product (reading the q / k tile
    again with permuted column offsets instead measured twice as slow).
    """
    tl.static_assert(F == 16, "the cyclic layout is written out for feature dim 16 (8 pair groups)")
    pid_dv = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_split = tl.program_id(2)
    b = pid_bh // H
    h = pid_bh % H
    FEAT: tl.constexpr = 1 + F + F * F
    R2: tl.constexpr = 0.7071067811865476

    offs_f = tl.arange(0, F)
    offs_t = tl.arange(0, BT)
    offs_dv = pid_dv * BLOCK_DV + tl.arange(0, BLOCK_DV)
    dv_mask = offs_dv < DV
    qk_base = b.to(tl.int64) * N * H * F + h * F
    v_base = b.to(tl.int64) * N * H * DV + h * DV
    st_base = pid_bh.to(tl.int64) * FEAT * DV
    zs_base = pid_bh.to(tl.int64) * FEAT
    dtype = DOT_DTYPE
    row_lin = 1 + offs_f
    row_dia = 1 + F + offs_f * (F + 1)

    # Running state (fp32, [BLOCK_DV, F] tiles), one variable per tile: Triton has no indexable
    # arrays of tensors, so the eight pair groups are spelled out.
    if HAS_INIT:
        kv_in = kv_in_ptr + pid_split.to(tl.int64) * in_split_stride_kv + st_base
        s0 = tl.load(kv_in + offs_dv, mask=dv_mask, other=0.0).to(tl.float32)
        s_lin = tl.load(kv_in + row_lin[None, :] * DV + offs_dv[:, None], mask=dv_mask[:, None], other=0.0)
        s_dia = tl.load(kv_in + row_dia[None, :] * DV + offs_dv[:, None], mask=dv_mask[:, None], other=0.0)
        s_lin = s_lin.to(tl.float32)
        s_dia = s_dia.to(tl.float32)
        s_p1 = _cyc_load(kv_in, 1, F, offs_dv, dv_mask, DV)
        s_p2 = _cyc_load(kv_in, 2, F, offs_dv, dv_mask, DV)
        s_p3 = _cyc_load(kv_in, 3, F, offs_dv, dv_mask, DV)
        s_p4 = _cyc_load(kv_in, 4, F, offs_dv, dv_mask, DV)
        s_p5 = _cyc_load(kv_in, 5, F, offs_dv, dv_mask, DV)
        s_p6 = _cyc_load(kv_in, 6, F, offs_dv, dv_mask, DV)
        s_p7 = _cyc_load(kv_in, 7, F, offs_dv, dv_mask, DV)
        s_p8 = _cyc_load(kv_in, 8, F, offs_dv, dv_mask, DV)
    else:
        s0 = tl.zeros([BLOCK_DV], dtype=tl.float32)
        s_lin = tl.zeros([BLOCK_DV, F], dtype=tl.float32)
        s_dia = tl.zeros([BLOCK_DV, F], dtype=tl.float32)
        s_p1 = tl.zeros([BLOCK_DV, F], dtype=tl.float32)
        s_p2 = tl.zeros([BLOCK_DV, F], dtype=tl.float32)
        s_p3 = tl.zeros([BLOCK_DV, F], dtype=tl.float32)
        s_p4 = tl.zeros([BLOCK_DV, F], dtype=tl.float32)
        s_p5 = tl.zeros([BLOCK_DV, F], dtype=tl.float32)
        s_p6 = tl.zeros([BLOCK_DV, F], dtype=tl.float32)
        s_p7 = tl.zeros([BLOCK_DV, F], dtype=tl.float32)
        s_p8 = tl.zeros([BLOCK_DV, F], dtype=tl.float32)
    # without NORM_INLINE the denominators come from _normaliser_kernel and z stays unused
    # fmt: off
    z0, z1, z2 = _normaliser_start(ks_in_ptr, pid_split, in_split_stride_ks, zs_base, offs_f, F, BT,
                                   HAS_INIT and NORM_INLINE)
    # fmt: on

    t_begin, t_end = _token_range(pid_split, tokens_per_split, N, enc_len_ptr, b, HAS_ENC_LEN)

    for t0 in range(t_begin, t_end, BT):
        # fmt: off
        t, t_ok, w, tok, k, v = _load_chunk(t0, t_end, offs_t, offs_f, offs_dv, dv_mask, k_ptr, v_ptr,
                                            mask_ptr, b, N, H, DV, qk_base, v_base, F, HAS_MASK)
        # fmt: on
        ks = k.to(tl.float32) * scale1
        vw = (v.to(tl.float32) * w[:, None]).to(dtype)
        vw_t = tl.trans(vw)  # [BLOCK_DV, BT]
        kd = k.to(dtype)
        if WRITE_OUTPUT:
            q = tl.load(q_ptr + tok[:, None] + offs_f[None, :], mask=t_ok[:, None], other=0.0)
            qd = q.to(dtype)
            qs = q.to(tl.float32) * scale1
            num, den = _intra_chunk(qs, ks, v, w, offs_t, dtype, PRECISION)
            # Inter-chunk, constant / linear / diagonal features (STATE_DTYPE: see _chunked_kernel)
            num = num + s0[None, :]
            num = tl.dot(qs.to(STATE_DTYPE), tl.trans(s_lin.to(STATE_DTYPE)), num, input_precision=PRECISION)
            qdia = qs * qs * R2
            num = tl.dot(
                qdia.to(STATE_DTYPE), tl.trans(s_dia.to(STATE_DTYPE)), num, input_precision=PRECISION
            )
            # fmt: off
            den = _denominator(den, qs, z0, z1, z2, den_ptr, pid_bh, N, t, t_ok,
                               NORM_INLINE, NORM_SPLIT, NORM_DTYPE)
            # fmt: on
        else:
            # pure reduction: no queries, no output (placeholders keep one _cyc_group signature)
            qd = kd
            qs = ks
            num = s0
        # State update of the constant / linear / diagonal features (all of earlier tokens were
        # read above, so the update may follow group by group below).
        s0 = s0 + tl.sum(vw.to(tl.float32), 0)
        s_lin = tl.dot(vw_t, ks.to(dtype), s_lin, input_precision=PRECISION)
        s_dia = tl.dot(vw_t, (ks * ks * R2).to(dtype), s_dia, input_precision=PRECISION)
        # Pair groups: each one's read-out uses only its own tile, so read it then update it.
        # fmt: off
        num, s_p1 = _cyc_group(num, s_p1, qd, qs, kd, ks, vw_t, scale1, 1, F,
                               WRITE_OUTPUT, PRECISION, DOT_DTYPE, STATE_DTYPE)
        num, s_p2 = _cyc_group(num, s_p2, qd, qs, kd, ks, vw_t, scale1, 2, F,
                               WRITE_OUTPUT, PRECISION, DOT_DTYPE, STATE_DTYPE)
        num, s_p3 = _cyc_group(num, s_p3, qd, qs, kd, ks, vw_t, scale1, 3, F,
                               WRITE_OUTPUT, PRECISION, DOT_DTYPE, STATE_DTYPE)
        num, s_p4 = _cyc_group(num, s_p4, qd, qs, kd, ks, vw_t, scale1, 4, F,
                               WRITE_OUTPUT, PRECISION, DOT_DTYPE, STATE_DTYPE)
        num, s_p5 = _cyc_group(num, s_p5, qd, qs, kd, ks, vw_t, scale1, 5, F,
                               WRITE_OUTPUT, PRECISION, DOT_DTYPE, STATE_DTYPE)
        num, s_p6 = _cyc_group(num, s_p6, qd, qs, kd, ks, vw_t, scale1, 6, F,
                               WRITE_OUTPUT, PRECISION, DOT_DTYPE, STATE_DTYPE)
        num, s_p7 = _cyc_group(num, s_p7, qd, qs, kd, ks, vw_t, scale1, 7, F,
                               WRITE_OUTPUT, PRECISION, DOT_DTYPE, STATE_DTYPE)
        num, s_p8 = _cyc_group(num, s_p8, qd, qs, kd, ks, vw_t, scale1, 8, F,
                               WRITE_OUTPUT, PRECISION, DOT_DTYPE, STATE_DTYPE)
        # fmt: on
        if WRITE_OUTPUT:
            o = num / (den[:, None] + eps) * w[:, None]
            tl.store(
                o_ptr + v_base + t[:, None] * (H * DV) + offs_dv[None, :],
                o.to(o_ptr.dtype.element_ty),
                mask=t_ok[:, None] & dv_mask[None, :],
            )
        if NORM_INLINE:
            z0, z1, z2 = _normaliser_update(z0, z1, z2, ks, w, NORM_SPLIT, NORM_DTYPE)

    if STORE_STATE:
        out_kv = kv_out_ptr + pid_split.to(tl.int64) * out_split_stride_kv + st_base
        tl.store(out_kv + offs_dv, s0, mask=dv_mask)
        tl.store(out_kv + row_lin[None, :] * DV + offs_dv[:, None], s_lin, mask=dv_mask[:, None])
        tl.store(out_kv + row_dia[None, :] * DV + offs_dv[:, None], s_dia, mask=dv_mask[:, None])
        _cyc_store(out_kv, s_p1, 1, F, offs_dv, dv_mask, DV)
        _cyc_store(out_kv, s_p2, 2, F, offs_dv, dv_mask, DV)
        _cyc_store(out_kv, s_p3, 3, F, offs_dv, dv_mask, DV)
        _cyc_store(out_kv, s_p4, 4, F, offs_dv, dv_mask, DV)
        _cyc_store(out_kv, s_p5, 5, F, offs_dv, dv_mask, DV)
        _cyc_store(out_kv, s_p6, 6, F, offs_dv, dv_mask, DV)
        _cyc_store(out_kv, s_p7, 7, F, offs_dv, dv_mask, DV)
        _cyc_store(out_kv, s_p8, 8, F, offs_dv, dv_mask, DV)
        if NORM_INLINE:
            if pid_dv == 0:
                _normaliser_store(ks_out_ptr, pid_split, out_split_stride_ks, zs_base, z0, z1, z2, offs_f, F)


@triton.jit
def _step_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    kv_ptr,
    ks_ptr,
    DV,
    eps,
    scale1,
    F: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    """One token for one (batch, head): state += phi(k) ⊗ v in place, read out with phi(q)."""
    pid = tl.program_id(0).to(tl.int64)
    FEAT: tl.constexpr = 1 + F + F * F
    offs_dv = tl.arange(0, BLOCK_DV)
    dv_mask = offs_dv < DV
    v = tl.load(v_ptr + pid * DV + offs_dv, mask=dv_mask, other=0.0).to(tl.float32)
    num = tl.zeros([BLOCK_DV], dtype=tl.float32)
    den = tl.zeros([BLOCK_R], dtype=tl.float32)
    for r0 in tl.static_range(0, FEAT, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        r_ok = r < FEAT
        linear = (r >= 1) & (r <= F)
        quad = (r > F) & r_ok
        idx = r - 1 - F
        i = tl.where(quad, idx // F, r - 1)
        j = tl.where(quad, idx % F, 0)
        first_ok = r_ok & (r >= 1)
        ki = tl.load(k_ptr + pid * F + i, mask=first_ok, other=0.0).to(tl.float32) * scale1
        kj = tl.load(k_ptr + pid * F + j, mask=quad, other=0.0).to(tl.float32) * scale1
        qi = tl.load(q_ptr + pid * F + i, mask=first_ok, other=0.0).to(tl.float32) * scale1
        qj = tl.load(q_ptr + pid * F + j, mask=quad, other=0.0).to(tl.float32) * scale1
        phi_k = tl.where(r == 0, 1.0, tl.where(linear, ki, ki * kj * 0.7071067811865476))
        phi_q = tl.where(r == 0, 1.0, tl.where(linear, qi, qi * qj * 0.7071067811865476))
        phi_k = tl.where(r_ok, phi_k, 0.0)
        phi_q = tl.where(r_ok, phi_q, 0.0)
        ptrs = kv_ptr + pid * FEAT * DV + r[:, None] * DV + offs_dv[None, :]
        st_mask = r_ok[:, None] & dv_mask[None, :]
        st = tl.load(ptrs, mask=st_mask, other=0.0) + phi_k[:, None] * v[None, :]
        tl.store(ptrs, st, mask=st_mask)
        num += tl.sum(phi_q[:, None] * st, 0)
        z = tl.load(ks_ptr + pid * FEAT + r, mask=r_ok, other=0.0) + phi_k
        tl.store(ks_ptr + pid * FEAT + r, z, mask=r_ok)
        den += phi_q * z
    o = num / (tl.sum(den, 0) + eps)
    tl.store(o_ptr + pid * DV + offs_dv, o.to(o_ptr.dtype.element_ty), mask=dv_mask)


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
    offs_dv = tl.arange(0, BLOCK_DV)
    dv_mask = offs_dv < DV
    kv = kv_ptr + pid * FEAT * DV
    ks = ks_ptr + pid * FEAT
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
    m2 = l_ok[:, None] & dv_mask[None, :]
    ptrs = kv + row[:, None] * DV + offs_dv[None, :]
    st = tl.load(ptrs, mask=m2, other=0.0) + phi_k[:, None] * v[None, :]
    tl.store(ptrs, st, mask=m2)
    num = tl.sum(phi_q[:, None] * st, 0)
    z = tl.load(ks + row, mask=l_ok, other=0.0) + phi_k
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
        m2 = p_ok[:, None] & dv_mask[None, :]
        st = (
            tl.load(kv + row[:, None] * DV + offs_dv[None, :], mask=m2, other=0.0)
            + phi_k[:, None] * v[None, :]
        )
        tl.store(kv + row[:, None] * DV + offs_dv[None, :], st, mask=m2)
        tl.store(kv + mirror[:, None] * DV + offs_dv[None, :], st, mask=m2)
        num += tl.sum(phi_q2[:, None] * st, 0)
        z = tl.load(ks + row, mask=p_ok, other=0.0) + phi_k
        tl.store(ks + row, z, mask=p_ok)
        tl.store(ks + mirror, z, mask=p_ok)
        den += tl.sum(phi_q2 * z, 0)
    o = num / (den + eps)
    tl.store(o_ptr + pid * DV + offs_dv, o.to(o_ptr.dtype.element_ty), mask=dv_mask)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def supports(q: torch.Tensor) -> bool:
    """Shapes the chunked kernel handles; others run the chunked reference on the same device."""
    return q.shape[-1] == 16 and q.dtype in (torch.float32, torch.float16, torch.bfloat16)


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs: exact fp32 products so the kernel meets the fp32 reference to 1e-4.
    return "ieee" if dtype == torch.float32 else "tf32"


_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def _dot_dtype(dtype: torch.dtype):
    # The CPU interpreter computes bf16 dots wrongly (it multiplies the raw bits), so when
    # interpreting, bf16 products are taken in fp32; on a GPU they are bf16 tensor-core products.
    if dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET", "0") == "1":
        return tl.float32
    return _TL_DTYPES[dtype]


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def _launch_chunked(
    q,
    k,
    v,
    *,
    out,
    mask_u8,
    enc_len,
    init: LinearAttentionState | None,
    init_per_split: bool,
    kv_out,
    ks_out,
    splits: int,
    tokens_per_split: int,
    write_output: bool,
    eps: float,
    config: ChunkConfig,
    den=None,
    norm_inline: bool = True,
):
    """One launch of a chunked kernel. norm_inline=False: no normaliser in the kernel (ks_out is
    not written); with write_output, den [b*h, n] (from _normaliser_pass) gives the denominators."""
    b, n, h, f = q.shape
    dv = v.shape[-1]
    block_dv = min(config.block_dv, max(16, triton.next_power_of_2(dv)))
    dummy = q
    grid = (triton.cdiv(dv, block_dv), b * h, splits)
    feats = 1 + f + f * f
    state_kv, state_ks = b * h * feats * dv, b * h * feats
    if config.pairs not in PAIR_LAYOUTS:
        raise ValueError(f"ChunkConfig.pairs={config.pairs!r}; choose from {', '.join(PAIR_LAYOUTS)}")
    args = [
        q,
        k,
        v,
        out if out is not None else dummy,
        mask_u8 if mask_u8 is not None else dummy,
        enc_len if enc_len is not None else dummy,
        init.kv if init is not None else dummy,
        init.ksum if init is not None else dummy,
        kv_out if kv_out is not None else dummy,
        ks_out if ks_out is not None else dummy,
        den if den is not None else dummy,
    ]
    sizes = [
        n,
        h,
        dv,
        tokens_per_split,
        state_kv if init_per_split else 0,
        state_ks if init_per_split else 0,
        state_kv,
        state_ks,
        eps,
        f**-0.25,
    ]
    # The pair layout orders the symmetric kernel's features; the cyclic kernel is written out for
    # feature dim 16 (8 groups), so other dims and the full f*f map take the one-hot kernel.
    cyclic = config.pairs == "cyclic" and config.symmetric and f == 16
    meta = dict(
        F=f,
        BT=config.chunk,
        BLOCK_DV=block_dv,
        WRITE_OUTPUT=write_output,
        HAS_MASK=mask_u8 is not None,
        HAS_ENC_LEN=enc_len is not None,
        HAS_INIT=init is not None,
        STORE_STATE=kv_out is not None,
        PRECISION=_precision(v.dtype),
        DOT_DTYPE=_dot_dtype(v.dtype),
        STATE_DTYPE=tl.float32 if v.dtype == torch.float16 else _dot_dtype(v.dtype),
        # the normaliser's fp32 products: split bf16 tensor-core products for half-precision
        # inputs, exact fp32 products for fp32 inputs (see _split_dot)
        NORM_SPLIT=config.split_normaliser and v.dtype != torch.float32 and cyclic,
        NORM_DTYPE=_dot_dtype(torch.bfloat16),
        NORM_INLINE=norm_inline,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
        **({"maxnreg": config.maxnreg} if config.maxnreg else {}),
    )
    if cyclic:
        return _chunked_cyclic_kernel[grid](*args, *sizes, **meta)
    pair_i, pair_j = _pair_tables(f, q.device)
    return _chunked_kernel[grid](
        *args,
        pair_i,
        pair_j,
        *sizes,
        NP=triton.next_power_of_2(max(f * (f - 1) // 2, 1)),
        SYM=config.symmetric,
        **meta,
    )


_PAIRS: dict = {}


def _pair_tables(f: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(i, j) for the pairs i < j of the feature dim, padded with (0, 0) to a power of two."""
    key = (f, str(device))
    if key not in _PAIRS:
        pairs = [(i, j) for i in range(f) for j in range(i + 1, f)]
        pad = triton.next_power_of_2(max(len(pairs), 1)) - len(pairs)
        pairs += [(0, 0)] * pad
        idx = torch.tensor(pairs, dtype=torch.int32, device=device)
        _PAIRS[key] = (idx[:, 0].contiguous(), idx[:, 1].contiguous())
    return _PAIRS[key]


def _contig_state(state: LinearAttentionState) -> LinearAttentionState:
    return LinearAttentionState(state.kv.contiguous(), state.ksum.contiguous())


def _split_plan(n: int, splits: int, chunk: int) -> tuple[int, int]:
    """(splits, tokens per split), the latter a multiple of the chunk so chunks never straddle."""
    tokens = triton.cdiv(triton.cdiv(max(n, 1), max(splits, 1)), chunk) * chunk
    return triton.cdiv(max(n, 1), tokens), tokens


def _normaliser_pass(q, k, *, mask_u8, enc_len, init_ksum, block, want_den, num_warps):
    """(den [b*h, n] fp32 or None, total sum of phi(k) [b, h, 273] plus init_ksum) by
    _normaliser_kernel: the blocks' sums of phi(k) in parallel (skipped for a single block), then
    each block's denominators in parallel, every program starting from the sums before it."""
    b, n, h, f = k.shape
    feats = 1 + f + f * f
    chunk = NORMALISER_CHUNK
    block = triton.cdiv(max(block, chunk), chunk) * chunk
    blocks = triton.cdiv(max(n, 1), block)
    half = k.dtype != torch.float32
    meta = dict(
        F=f,
        HAS_MASK=mask_u8 is not None,
        HAS_ENC_LEN=enc_len is not None,
        PRECISION=_precision(k.dtype),
        DOT_DTYPE=_dot_dtype(k.dtype),
        SPLIT=half,
        SPLIT_DTYPE=_dot_dtype(torch.bfloat16),
        Q_EXACT=k.dtype == torch.bfloat16,
        num_warps=num_warps,
    )
    # the sums need no [chunk, chunk] scores: larger chunks where the block allows
    sums_chunk = NORMALISER_SUMS_CHUNK if block % NORMALISER_SUMS_CHUNK == 0 else chunk
    grid = (b * h, blocks)
    stride = b * h * feats
    dummy = k
    mask_arg = mask_u8 if mask_u8 is not None else dummy
    enc_arg = enc_len if enc_len is not None else dummy
    init_arg = init_ksum if init_ksum is not None else dummy
    sums = dummy
    if blocks > 1 or not want_den:
        sums = torch.empty(blocks, b * h, feats, device=k.device, dtype=torch.float32)
        # fmt: off
        _normaliser_kernel[grid](k, k, mask_arg, enc_arg, dummy, sums, dummy, dummy, n, h, block, stride,
                                 f**-0.25, BT=sums_chunk, WRITE_DEN=False, HAS_INIT=False, **meta)
        # fmt: on
    if not want_den:
        total = sums[0] if blocks == 1 else sums.sum(0)
        total = total.reshape(b, h, feats)
        return None, (total + init_ksum if init_ksum is not None else total)
    den = torch.empty(b * h, n, device=k.device, dtype=torch.float32)
    total = torch.empty(b, h, feats, device=k.device, dtype=torch.float32)
    # fmt: off
    _normaliser_kernel[grid](q, k, mask_arg, enc_arg, init_arg, sums, total, den, n, h, block, stride,
                             f**-0.25, BT=chunk, WRITE_DEN=True, HAS_INIT=init_ksum is not None, **meta)
    # fmt: on
    return den, total


def _partial_states(k, v, *, mask_u8, enc_len, splits, tokens_per_split, config, norm_inline=True):
    """Per-split sums of phi(k) ⊗ v (fp32), one launch parallel over (value block, batch*head, split);
    with norm_inline=False the kernel keeps no normaliser and the per-split ksums are not written."""
    b, n, h, f = k.shape
    dv = v.shape[-1]
    feats = 1 + f + f * f
    kv_parts = torch.empty(splits, b, h, feats, dv, device=k.device, dtype=torch.float32)
    ks_parts = torch.empty(splits, b, h, feats, device=k.device, dtype=torch.float32)
    _launch_chunked(
        k,
        k,
        v,
        out=None,
        mask_u8=mask_u8,
        enc_len=enc_len,
        init=None,
        init_per_split=False,
        kv_out=kv_parts,
        ks_out=ks_parts,
        splits=splits,
        tokens_per_split=tokens_per_split,
        write_output=False,
        eps=0.0,
        config=config,
        norm_inline=norm_inline,
    )
    return kv_parts, (ks_parts if norm_inline else None)


def _segment_starts(parts, init):
    """(starts, total) of per-segment sums ``parts`` [segments, ...]: starts[s] = init + the sums
    of the segments before s, total = init + all of them (init may be None)."""
    starts = torch.cumsum(parts, 0).roll(1, 0)
    total = starts[0].clone()
    starts[0].zero_()
    if init is not None:
        starts += init
        total += init
    return starts, total


def _causal_normaliser(q, k, *, mask_u8, init_ksum, config: ChunkConfig):
    """(den, total ksum) of the causal pass by the normaliser pass."""
    # fmt: off
    return _normaliser_pass(q, k, mask_u8=mask_u8, enc_len=None, init_ksum=init_ksum,
                            block=config.normaliser_block, want_den=True, num_warps=config.normaliser_warps)
    # fmt: on


def based_prefill(
    q,
    k,
    v,
    *,
    mask=None,
    eps=1e-12,
    initial_state=None,
    output_final_state=False,
    config: ChunkConfig | None = None,
    _normaliser=None,
):
    """Causal Based prefill. With ``config.segments > 1`` the sequence is cut into segments that run in
    parallel: one reduction launch gives each segment's state sum, an exclusive prefix sum gives each
    segment its starting state, then the causal launch runs all segments at once.
    (``_normaliser``: the (den, total ksum) of _normaliser_pass, already computed by pla_prefill.)"""
    if not supports(q):
        return reference.based_chunked(
            q, k, v, mask=mask, eps=eps, initial_state=initial_state, output_final_state=output_final_state
        )
    config = config or DEFAULT_CONFIG
    b, n, h, f = q.shape
    dv = v.shape[-1]
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    mask_u8 = mask.to(torch.uint8).contiguous() if mask is not None else None
    init = _contig_state(initial_state) if initial_state is not None else None
    out = torch.empty_like(v)
    want = config.segments
    if want <= 0:
        # Segments cost one extra reduction pass, so use them only when (value block, batch*head)
        # programs alone leave most of the GPU idle (small batches), and keep >= 1k tokens each.
        block_dv = min(config.block_dv, max(16, triton.next_power_of_2(dv)))
        programs = triton.cdiv(dv, block_dv) * b * h
        sms = _num_sms(q.device)
        want = 1 if programs >= sms else max(1, min(2 * sms // programs, n // 1024))
    segments, seg_tokens = _split_plan(n, want, config.chunk)
    inline = config.normaliser_block <= 0
    den = total_ksum = None
    if _normaliser is not None:
        den, total_ksum = _normaliser
    elif not inline:
        init_ksum = init.ksum if init is not None else None
        den, total_ksum = _causal_normaliser(q, k, mask_u8=mask_u8, init_ksum=init_ksum, config=config)
    if segments == 1:
        final = reference.empty_state(b, h, f, dv, q.device) if output_final_state else None
        if final is not None and not inline:
            final.ksum = total_ksum
        _launch_chunked(
            q,
            k,
            v,
            out=out,
            mask_u8=mask_u8,
            enc_len=None,
            init=init,
            init_per_split=False,
            kv_out=final.kv if final is not None else None,
            ks_out=final.ksum if final is not None else None,
            splits=1,
            tokens_per_split=max(n, 1),
            write_output=True,
            eps=eps,
            config=config,
            den=den,
            norm_inline=inline,
        )
        return out, final
    kv_parts, ks_parts = _partial_states(
        k,
        v,
        mask_u8=mask_u8,
        enc_len=None,
        splits=segments,
        tokens_per_split=seg_tokens,
        config=config,
        norm_inline=inline,
    )
    kv_starts, kv_total = _segment_starts(kv_parts, init.kv if init is not None else None)
    if inline:
        ks_starts, total_ksum = _segment_starts(ks_parts, init.ksum if init is not None else None)
    else:  # the normaliser pass has the total; the kernel reads no per-segment normaliser
        ks_starts = torch.zeros(segments, b, h, 1 + f + f * f, device=q.device, dtype=torch.float32)
    final = LinearAttentionState(kv_total, total_ksum) if output_final_state else None
    _launch_chunked(
        q,
        k,
        v,
        out=out,
        mask_u8=mask_u8,
        enc_len=None,
        init=LinearAttentionState(kv_starts, ks_starts),
        init_per_split=True,
        kv_out=None,
        ks_out=None,
        splits=segments,
        tokens_per_split=seg_tokens,
        write_output=True,
        eps=eps,
        config=config,
        den=den,
        norm_inline=inline,
    )
    return out, final


def encoder_state(
    k_enc, v_enc, *, enc_lengths, mask=None, config: ChunkConfig | None = None
) -> LinearAttentionState:
    """Sum of phi(k_enc) ⊗ v_enc over encoder positions, parallel over token splits."""
    config = config or DEFAULT_ENCODER_CONFIG
    k_enc, v_enc = k_enc.contiguous(), v_enc.contiguous()
    mask_u8 = mask.to(torch.uint8).contiguous() if mask is not None else None
    enc_len = enc_lengths.to(torch.int32).contiguous()
    if config.normaliser_block <= 0:
        return _encoder_kv(k_enc, v_enc, mask_u8=mask_u8, enc_len=enc_len, config=config)
    ksum = _encoder_ksum(k_enc, mask_u8=mask_u8, enc_len=enc_len, config=config)
    return LinearAttentionState(
        _encoder_kv(k_enc, v_enc, mask_u8=mask_u8, enc_len=enc_len, config=config).kv, ksum
    )


def _encoder_ksum(k_enc, *, mask_u8, enc_len, config: ChunkConfig):
    """The encoder's normaliser (sum of phi(k_enc)) by the normaliser pass."""
    # fmt: off
    return _normaliser_pass(k_enc, k_enc, mask_u8=mask_u8, enc_len=enc_len, init_ksum=None,
                            block=config.normaliser_block, want_den=False, num_warps=config.normaliser_warps)[1]
    # fmt: on


def _encoder_kv(k_enc, v_enc, *, mask_u8, enc_len, config: ChunkConfig) -> LinearAttentionState:
    """The encoder reduction: kv (and, with the inline normaliser, ksum; else ksum is None)."""
    b, n, h, f = k_enc.shape
    dv = v_enc.shape[-1]
    block_dv = min(config.block_dv, max(16, triton.next_power_of_2(dv)))
    programs = triton.cdiv(dv, block_dv) * b * h
    # Enough programs to fill the GPU several times over, but at least ~1k tokens each.
    want = max(1, min(triton.cdiv(n, 1024), triton.cdiv(8 * _num_sms(k_enc.device), programs)))
    splits, tokens_per_split = _split_plan(n, want, config.chunk)
    inline = config.normaliser_block <= 0
    kv_parts, ks_parts = _partial_states(
        k_enc,
        v_enc,
        mask_u8=mask_u8,
        enc_len=enc_len,
        splits=splits,
        tokens_per_split=tokens_per_split,
        config=config,
        norm_inline=inline,
    )
    kv = kv_parts[0] if splits == 1 else kv_parts.sum(0)
    ksum = None
    if inline:
        ksum = ks_parts[0] if splits == 1 else ks_parts.sum(0)
    return LinearAttentionState(kv, ksum)


_SIDE_STREAMS: dict = {}
# PLA overlaps its encoder reduction with the normaliser passes from this prompt length on: faster
# at 8k and above, slower at 2k (docs/benchmarks.md, eighth run)
SIDE_STREAM_MIN_TOKENS = 8192


def _side_stream(device: torch.device):
    key = device.index if device.index is not None else torch.cuda.current_device()
    if key not in _SIDE_STREAMS:
        _SIDE_STREAMS[key] = torch.cuda.Stream(device=device)
    return _SIDE_STREAMS[key]


def pla_prefill(
    q,
    k,
    v,
    k_enc,
    v_enc,
    *,
    enc_lengths,
    mask=None,
    eps=1e-12,
    output_final_state=False,
    config: ChunkConfig | None = None,
    encoder_config: ChunkConfig | None = None,
):
    """Prefix linear attention: the encoder reduction (``encoder_config``, default
    DEFAULT_ENCODER_CONFIG), then the causal prefill started from its state (``config``, default
    DEFAULT_CONFIG). On a GPU, with both normalisers in their own pass, the encoder reduction runs
    on a side stream beside the normaliser passes (they need only the encoder's normaliser)."""
    if not supports(q):
        return reference.pla_chunked(
            q,
            k,
            v,
            k_enc,
            v_enc,
            enc_lengths=enc_lengths,
            mask=mask,
            eps=eps,
            output_final_state=output_final_state,
        )
    config = config or DEFAULT_CONFIG
    encoder_config = encoder_config or DEFAULT_ENCODER_CONFIG
    overlap = q.is_cuda and q.shape[1] >= SIDE_STREAM_MIN_TOKENS
    if not (overlap and config.normaliser_block > 0 and encoder_config.normaliser_block > 0):
        enc = encoder_state(k_enc, v_enc, enc_lengths=enc_lengths, mask=mask, config=encoder_config)
        return based_prefill(
            q,
            k,
            v,
            mask=mask,
            eps=eps,
            initial_state=enc,
            output_final_state=output_final_state,
            config=config,
        )
    q, k, k_enc, v_enc = q.contiguous(), k.contiguous(), k_enc.contiguous(), v_enc.contiguous()
    mask_u8 = mask.to(torch.uint8).contiguous() if mask is not None else None
    enc_len = enc_lengths.to(torch.int32).contiguous()
    main = torch.cuda.current_stream(q.device)
    side = _side_stream(q.device)
    side.wait_stream(main)  # the inputs above are ready
    with torch.cuda.stream(side):
        enc_kv = _encoder_kv(k_enc, v_enc, mask_u8=mask_u8, enc_len=enc_len, config=encoder_config).kv
    enc_ksum = _encoder_ksum(k_enc, mask_u8=mask_u8, enc_len=enc_len, config=encoder_config)
    normaliser = _causal_normaliser(q, k, mask_u8=mask_u8, init_ksum=enc_ksum, config=config)
    main.wait_stream(side)
    enc_kv.record_stream(main)  # made on the side stream, used on this one from here on
    return based_prefill(
        q,
        k,
        v,
        mask=mask,
        eps=eps,
        initial_state=LinearAttentionState(enc_kv, enc_ksum),
        output_final_state=output_final_state,
        config=config,
        _normaliser=normaliser,
    )


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
    if config.symmetric:
        _step_sym_kernel[(b * h,)](
            q,
            k,
            v,
            out,
            kv,
            ksum,
            *_pair_tables(f, q.device),
            dv,
            eps,
            f**-0.25,
            F=f,
            NP=triton.next_power_of_2(max(f * (f - 1) // 2, 1)),
            BLOCK_P=min(config.block_r, triton.next_power_of_2(max(f * (f - 1) // 2, 1))),
            BLOCK_DV=max(16, triton.next_power_of_2(dv)),
            num_warps=config.num_warps,
        )
    else:
        _step_kernel[(b * h,)](
            q,
            k,
            v,
            out,
            kv,
            ksum,
            dv,
            eps,
            f**-0.25,
            F=f,
            BLOCK_R=config.block_r,
            BLOCK_DV=max(16, triton.next_power_of_2(dv)),
            num_warps=config.num_warps,
        )
    if copy_back:
        state.kv.copy_(kv)
        state.ksum.copy_(ksum)
    return out
