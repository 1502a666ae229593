"""Triton kernels of causal Based (Taylor) linear attention: the chunked prefill and its launcher.

Algorithm of the prefill kernel (one program per (block of value columns, batch*head[, segment])):
walk the sequence in chunks of BT tokens while holding the running state in registers, split by
feature order — s0 [dv] (constant feature), the linear and diagonal-square rows [2f, dv], the
f(f-1)/2 pair rows i < j [128 for f=16, dv] (the quadratic features are symmetric, so the
256 products k_i k_j collapse to 136 distinct ones) — all fp32. The normaliser runs as its own
pass before it (:mod:`.triton_normaliser`) and the prefill kernel reads each token's
denominator; ``ChunkConfig(normaliser_block=0)`` carries it inside the walk instead. Inside a
chunk the scores are the polynomial 1 + s + s^2/2 of s = q·k/sqrt(f) (a [BT, BT] tile; the 273
features are never built for pairs of tokens); across chunks the query features meet the state.
Only the state is ever expanded; the 273-row layout of :class:`LinearAttentionState` is read and
written at the ends. For small batch x heads the sequence is cut into segments that run in
parallel from prefix-summed segment states. With ``write_output=False`` the same kernels are a
pure state reduction: PLA's encoder pass (:mod:`jrt_prompt.kernels.pla.triton_prefill`).

The default, ``ChunkConfig(pairs="cyclic")``, runs this algorithm with the pair rows grouped by
cyclic distance (_chunked_cyclic_kernel): ten [dv, f] state tiles and [BT, f] temporaries instead
of a [128, dv] pair tile and [BT, 128] one-hot expansions (``pairs="onehot"``, _chunked_kernel),
for lower register pressure. Same states in and out. Reference: :mod:`.reference`; measured
figures: docs/benchmarks.md.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..hardware import multiprocessor_count
from ..taylor.config import DEFAULT_CONFIG, PAIR_LAYOUTS, ChunkConfig
from ..taylor.reference import empty_state
from ..taylor.state import LinearAttentionState
from ..taylor.triton_common import (
    _contig_state,
    _dot_dtype,
    _intra_chunk,
    _load_chunk,
    _pair_tables,
    _precision,
    _split_plan,
    _token_range,
    supports,
)
from . import reference
from .triton_normaliser import (
    _causal_normaliser,
    _denominator,
    _normaliser_start,
    _normaliser_store,
    _normaliser_update,
)


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
    NORM_SPLIT: tl.constexpr,
    NORM_DTYPE: tl.constexpr,
    NORM_INLINE: tl.constexpr,
):
    """Chunked Based attention over tokens [split * tokens_per_split, ...) of one (batch, head).

    WRITE_OUTPUT=False turns it into a pure state reduction (encoder pass, segment pass).

    The quadratic features are symmetric: q_i q_j k_i k_j appears twice for i != j, so the
    kernel works on the f diagonal terms plus the f(f-1)/2 pairs i < j (120 for
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
    NL: tl.constexpr = 2 * F  # linear features, then the diagonal squares
    NQ: tl.constexpr = NP  # pairs i < j (padded)

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

    # Running state (fp32): s0 [dv] constant feature, sl [NL, dv] linear (+ diagonal) rows,
    # sq [NQ, dv] quadratic rows; the normaliser as in _normaliser_start.
    if HAS_INIT:
        kv_in = kv_in_ptr + pid_split.to(tl.int64) * in_split_stride_kv + st_base
        s0 = tl.load(kv_in + offs_dv, mask=dv_mask, other=0.0)
        sl = tl.load(kv_in + row_l[:, None] * DV + offs_dv[None, :], mask=dv_mask[None, :], other=0.0)
        m = p_ok[:, None] & dv_mask[None, :]
        sq = tl.load(kv_in + row_q[:, None] * DV + offs_dv[None, :], mask=m, other=0.0)
        sq = (sq + tl.load(kv_in + row_q_mirror[:, None] * DV + offs_dv[None, :], mask=m, other=0.0)) * R2
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
            # Expand q by one-hot selection products on the tensor cores: no reshapes, no
            # gathers, and the tiles come out in the accumulator layout the next product takes.
            ql = tl.dot(q.to(dtype), sel_l_t, input_precision=PRECISION) * scale1  # [BT, NL]
            ql = tl.where(is_diag[None, :], ql * ql * R2, ql)
            qa = tl.dot(q.to(dtype), sel_i_t, input_precision=PRECISION)  # [BT, NQ]: q_i
            qb = tl.dot(q.to(dtype), sel_j_t, input_precision=PRECISION)  # q_j
            qq = qa * qb * (scale1 * scale1)
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
        kt = tl.trans(k.to(dtype))  # [F, BT]
        kl = tl.dot(sel_l, kt, input_precision=PRECISION) * scale1  # [NL, BT]
        kl = tl.where(is_diag[:, None], kl * kl * R2, kl)
        ka = tl.dot(sel_i, kt, input_precision=PRECISION)  # [NQ, BT]: k_i (padding rows 0)
        kb = tl.dot(sel_j, kt, input_precision=PRECISION)
        kq = ka * kb * (scale1 * scale1)
        s0 = s0 + tl.sum(vw.to(tl.float32), 0)
        sl = tl.dot(kl.to(dtype), vw, sl, input_precision=PRECISION)
        sq = tl.dot(kq.to(dtype), vw, sq, input_precision=PRECISION)
        if NORM_INLINE:
            z0, z1, z2 = _normaliser_update(z0, z1, z2, ks, w, NORM_SPLIT, NORM_DTYPE)

    if STORE_STATE:
        out_kv = kv_out_ptr + pid_split.to(tl.int64) * out_split_stride_kv + st_base
        tl.store(out_kv + offs_dv, s0, mask=dv_mask)
        tl.store(out_kv + row_l[:, None] * DV + offs_dv[None, :], sl, mask=dv_mask[None, :])
        m = p_ok[:, None] & dv_mask[None, :]
        tl.store(out_kv + row_q[:, None] * DV + offs_dv[None, :], sq * R2, mask=m)
        tl.store(out_kv + row_q_mirror[:, None] * DV + offs_dv[None, :], sq * R2, mask=m)
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
# the one-hot layout. The state holds exactly what the pair rows of _chunked_kernel hold (pair
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
    # (S_ij + S_ji) / sqrt2, exact for any state, symmetric or not (as _chunked_kernel reads it)
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
    """_chunked_kernel with the pair rows in the cyclic layout: same arguments, same
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
    # feature dim 16 (8 groups), so other dims take the one-hot kernel.
    cyclic = config.pairs == "cyclic" and f == 16
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
        **meta,
    )


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
        sms = multiprocessor_count(q.device)
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
        final = empty_state(b, h, f, dv, q.device) if output_final_state else None
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
