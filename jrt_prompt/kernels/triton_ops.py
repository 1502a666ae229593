"""Triton kernels for Based (Taylor) linear attention, prefix linear attention and the decode step.

Prefill runs in two launches, neither of which holds the whole state of a head in registers:

1. ``_scan_kernel`` (one program per (value block, batch*head)) walks the sequence in chunks of
   ``chunk`` tokens, keeps the fp32 running state and stores it at the start of every chunk — the
   state of all earlier tokens, in the dtype of the read-out (bf16 for bf16 inputs).
2. ``_output_kernel`` (one program per (query tile, batch*head, value block), all independent)
   reads the stored state of its chunk with the query features and adds the causal part inside
   the chunk as the polynomial 1 + s + s^2/2 of s = q·k/sqrt(f) on [tile, tile] score blocks.

The Taylor features are never expanded for pairs of tokens, and the state uses the pair symmetry
of the quadratic features in a *cyclic* layout (``psi``): for f = 16 the 256 products k_i k_j
are the diagonal k_i^2 plus, for each distance d = 1..8, the 16 products k_i k_{(i+d) mod 16}
(each unordered pair once for d < 8, twice at half weight for d = 8) — 161 rows instead of 273,
and every group is a [tokens, 16] tile built from two loads of the same row with no gathers.
``psi(q)·psi(k) = phi(q)·phi(k)`` exactly; the 273-row layout of :class:`LinearAttentionState`
is converted at the ends only (:func:`to_cyclic`, :func:`from_cyclic`).

Prefix linear attention runs the scan over the encoder tokens first (split into parallel token
ranges, partial states summed), and starts the causal scan from that state: the encoder term and
its shared normaliser come out of the same read-out. The decode step is one fused kernel per
token (_step_sym_kernel). Measured figures: docs/benchmarks.md.
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
    """Launch parameters of the prefill kernels (tuned on an H200 by `jrt bench prefill --tune`)."""

    chunk: int = 256  # tokens between stored states (a multiple of block_t)
    block_t: int = 64  # query / key tile of the output kernel, token tile of the scan
    block_dv: int = 64  # value columns per output program
    scan_block_dv: int = 32  # value columns per scan program
    num_warps: int = 4  # output kernel
    scan_warps: int = 4
    num_stages: int = 2


DEFAULT_CONFIG = ChunkConfig()


@dataclass(frozen=True)
class StepConfig:
    """Launch parameters of the decode-step kernel: state rows per block, warps per program."""

    block_r: int = 32
    num_warps: int = 1
    symmetric: bool = True  # read each symmetric pair of quadratic rows once (_step_sym_kernel)


DEFAULT_STEP_CONFIG = StepConfig()


def cyclic_rows(f: int) -> int:
    """Rows of the cyclic feature layout: constant, f linear, f diagonal, f/2 groups of f pairs."""
    return 1 + 2 * f + f * (f // 2)


# ---------------------------------------------------------------------------------------------
# Prefill kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _group_feature(x_ptr, tok, offs_f, xs, scale1, ok, D: tl.constexpr, F: tl.constexpr):
    """Features of pair group D (distance D) of a [tokens, F] tile: x_i x_{(i+D) mod F} / sqrt(f),
    at half weight (1/sqrt2 on each side) for D = F/2, where every pair appears twice."""
    partner = (offs_f + D) % F
    xp = tl.load(x_ptr + tok[:, None] + partner[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
    feat = xs * xp * scale1
    if D == F // 2:
        feat = feat * 0.7071067811865476
    return feat


@triton.jit
def _store_rows(base, row0: tl.constexpr, offs_f, offs_dv, dv_ok, rows, DV):
    tl.store(
        base + (row0 + offs_f)[:, None] * DV + offs_dv[None, :],
        rows.to(base.dtype.element_ty),
        mask=dv_ok[None, :],
    )


@triton.jit
def _load_rows(base, row0: tl.constexpr, offs_f, offs_dv, dv_ok, DV):
    return tl.load(base + (row0 + offs_f)[:, None] * DV + offs_dv[None, :], mask=dv_ok[None, :], other=0.0)


@triton.jit
def _scan_kernel(
    k_ptr,
    v_ptr,
    mask_ptr,
    enc_len_ptr,
    init_kv_ptr,
    init_z_ptr,
    chunk_kv_ptr,
    chunk_z_ptr,
    final_kv_ptr,
    final_z_ptr,
    N,
    H,
    DV,
    NC,
    tokens_per_split,
    scale1,
    F: tl.constexpr,
    CS: tl.constexpr,
    BT: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_ENC_LEN: tl.constexpr,
    HAS_INIT: tl.constexpr,
    STORE_CHUNKS: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    """Running state of one (value block, batch*head[, token split]) in the cyclic layout.

    STORE_CHUNKS: store the state before every chunk of CS tokens (chunk_kv [bh, NC, R, DV] in
    the read-out dtype, chunk_z [bh, NC, R] fp32) and the final state (fp32). Otherwise the
    program sums tokens [split * tokens_per_split, ...) (up to the row's encoder length with
    HAS_ENC_LEN) into final_kv[split] — the encoder reduction.

    The state is ten [F, BLOCK_DV] fp32 tiles for F = 16 (constant row aside): linear, diagonal
    and the eight pair groups, each updated by one [F, BT] x [BT, BLOCK_DV] product per tile.
    """
    tl.static_assert(F == 16, "the scan kernel is written out for feature dim 16")
    pid_dv = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_split = tl.program_id(2)
    b = pid_bh // H
    h = pid_bh % H
    R: tl.constexpr = 1 + 2 * F + F * (F // 2)
    R2: tl.constexpr = 0.7071067811865476
    offs_f = tl.arange(0, F)
    offs_t = tl.arange(0, BT)
    offs_dv = pid_dv * BLOCK_DV + tl.arange(0, BLOCK_DV)
    dv_ok = offs_dv < DV
    qk_base = b.to(tl.int64) * N * H * F + h * F
    v_base = b.to(tl.int64) * N * H * DV + h * DV
    dt = DOT_DTYPE

    if HAS_INIT:
        ikv = init_kv_ptr + pid_bh.to(tl.int64) * R * DV
        iz = init_z_ptr + pid_bh.to(tl.int64) * R
        s0 = tl.load(ikv + offs_dv, mask=dv_ok, other=0.0)
        z0 = tl.load(iz)
        s_lin = _load_rows(ikv, 1, offs_f, offs_dv, dv_ok, DV)
        s_dia = _load_rows(ikv, 1 + F, offs_f, offs_dv, dv_ok, DV)
        s_p1 = _load_rows(ikv, 1 + 2 * F, offs_f, offs_dv, dv_ok, DV)
        s_p2 = _load_rows(ikv, 1 + 3 * F, offs_f, offs_dv, dv_ok, DV)
        s_p3 = _load_rows(ikv, 1 + 4 * F, offs_f, offs_dv, dv_ok, DV)
        s_p4 = _load_rows(ikv, 1 + 5 * F, offs_f, offs_dv, dv_ok, DV)
        s_p5 = _load_rows(ikv, 1 + 6 * F, offs_f, offs_dv, dv_ok, DV)
        s_p6 = _load_rows(ikv, 1 + 7 * F, offs_f, offs_dv, dv_ok, DV)
        s_p7 = _load_rows(ikv, 1 + 8 * F, offs_f, offs_dv, dv_ok, DV)
        s_p8 = _load_rows(ikv, 1 + 9 * F, offs_f, offs_dv, dv_ok, DV)
        z_lin = tl.load(iz + 1 + offs_f)
        z_dia = tl.load(iz + 1 + F + offs_f)
        z_p1 = tl.load(iz + 1 + 2 * F + offs_f)
        z_p2 = tl.load(iz + 1 + 3 * F + offs_f)
        z_p3 = tl.load(iz + 1 + 4 * F + offs_f)
        z_p4 = tl.load(iz + 1 + 5 * F + offs_f)
        z_p5 = tl.load(iz + 1 + 6 * F + offs_f)
        z_p6 = tl.load(iz + 1 + 7 * F + offs_f)
        z_p7 = tl.load(iz + 1 + 8 * F + offs_f)
        z_p8 = tl.load(iz + 1 + 9 * F + offs_f)
    else:
        s0 = tl.zeros([BLOCK_DV], dtype=tl.float32)
        z0 = tl.sum(tl.zeros([BT], dtype=tl.float32), 0)
        s_lin = tl.zeros([F, BLOCK_DV], dtype=tl.float32)
        s_dia = tl.zeros([F, BLOCK_DV], dtype=tl.float32)
        s_p1 = tl.zeros([F, BLOCK_DV], dtype=tl.float32)
        s_p2 = tl.zeros([F, BLOCK_DV], dtype=tl.float32)
        s_p3 = tl.zeros([F, BLOCK_DV], dtype=tl.float32)
        s_p4 = tl.zeros([F, BLOCK_DV], dtype=tl.float32)
        s_p5 = tl.zeros([F, BLOCK_DV], dtype=tl.float32)
        s_p6 = tl.zeros([F, BLOCK_DV], dtype=tl.float32)
        s_p7 = tl.zeros([F, BLOCK_DV], dtype=tl.float32)
        s_p8 = tl.zeros([F, BLOCK_DV], dtype=tl.float32)
        z_lin = tl.zeros([F], dtype=tl.float32)
        z_dia = tl.zeros([F], dtype=tl.float32)
        z_p1 = tl.zeros([F], dtype=tl.float32)
        z_p2 = tl.zeros([F], dtype=tl.float32)
        z_p3 = tl.zeros([F], dtype=tl.float32)
        z_p4 = tl.zeros([F], dtype=tl.float32)
        z_p5 = tl.zeros([F], dtype=tl.float32)
        z_p6 = tl.zeros([F], dtype=tl.float32)
        z_p7 = tl.zeros([F], dtype=tl.float32)
        z_p8 = tl.zeros([F], dtype=tl.float32)

    t_begin = pid_split * tokens_per_split
    t_end = tl.minimum(N, t_begin + tokens_per_split)
    if HAS_ENC_LEN:
        t_end = tl.minimum(t_end, tl.load(enc_len_ptr + b).to(tl.int32))
    for t0 in range(t_begin, t_end, BT):
        if STORE_CHUNKS:
            if t0 % CS == 0:
                ckv = chunk_kv_ptr + (pid_bh.to(tl.int64) * NC + t0 // CS) * R * DV
                tl.store(ckv + offs_dv, s0.to(ckv.dtype.element_ty), mask=dv_ok)
                _store_rows(ckv, 1, offs_f, offs_dv, dv_ok, s_lin, DV)
                _store_rows(ckv, 1 + F, offs_f, offs_dv, dv_ok, s_dia, DV)
                _store_rows(ckv, 1 + 2 * F, offs_f, offs_dv, dv_ok, s_p1, DV)
                _store_rows(ckv, 1 + 3 * F, offs_f, offs_dv, dv_ok, s_p2, DV)
                _store_rows(ckv, 1 + 4 * F, offs_f, offs_dv, dv_ok, s_p3, DV)
                _store_rows(ckv, 1 + 5 * F, offs_f, offs_dv, dv_ok, s_p4, DV)
                _store_rows(ckv, 1 + 6 * F, offs_f, offs_dv, dv_ok, s_p5, DV)
                _store_rows(ckv, 1 + 7 * F, offs_f, offs_dv, dv_ok, s_p6, DV)
                _store_rows(ckv, 1 + 8 * F, offs_f, offs_dv, dv_ok, s_p7, DV)
                _store_rows(ckv, 1 + 9 * F, offs_f, offs_dv, dv_ok, s_p8, DV)
                if pid_dv == 0:
                    cz = chunk_z_ptr + (pid_bh.to(tl.int64) * NC + t0 // CS) * R
                    tl.store(cz, z0)
                    tl.store(cz + 1 + offs_f, z_lin)
                    tl.store(cz + 1 + F + offs_f, z_dia)
                    tl.store(cz + 1 + 2 * F + offs_f, z_p1)
                    tl.store(cz + 1 + 3 * F + offs_f, z_p2)
                    tl.store(cz + 1 + 4 * F + offs_f, z_p3)
                    tl.store(cz + 1 + 5 * F + offs_f, z_p4)
                    tl.store(cz + 1 + 6 * F + offs_f, z_p5)
                    tl.store(cz + 1 + 7 * F + offs_f, z_p6)
                    tl.store(cz + 1 + 8 * F + offs_f, z_p7)
                    tl.store(cz + 1 + 9 * F + offs_f, z_p8)
        t = t0 + offs_t
        ok = t < t_end
        w = ok.to(tl.float32)
        if HAS_MASK:
            w = w * tl.load(mask_ptr + b.to(tl.int64) * N + t, mask=ok, other=0).to(tl.float32)
        tok = qk_base + t * (H * F)
        k = tl.load(k_ptr + tok[:, None] + offs_f[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
        v = tl.load(
            v_ptr + v_base + t[:, None] * (H * DV) + offs_dv[None, :], mask=ok[:, None] & dv_ok[None, :], other=0.0
        )
        vd = v.to(dt)
        # the token weights (padding, encoder end) go on the key side: w * phi(k)
        ks = k * scale1 * w[:, None]  # [BT, F]; each feature below is ks times an unweighted factor
        s0 = s0 + tl.sum(v.to(tl.float32) * w[:, None], 0)
        z0 = z0 + tl.sum(w, 0)
        f_lin = ks
        f_dia = ks * k * (scale1 * R2)
        s_lin = tl.dot(tl.trans(f_lin.to(dt)), vd, s_lin, input_precision=PRECISION)
        s_dia = tl.dot(tl.trans(f_dia.to(dt)), vd, s_dia, input_precision=PRECISION)
        z_lin += tl.sum(f_lin, 0)
        z_dia += tl.sum(f_dia, 0)
        f = _group_feature(k_ptr, tok, offs_f, ks, scale1, ok, 1, F)
        s_p1 = tl.dot(tl.trans(f.to(dt)), vd, s_p1, input_precision=PRECISION)
        z_p1 += tl.sum(f, 0)
        f = _group_feature(k_ptr, tok, offs_f, ks, scale1, ok, 2, F)
        s_p2 = tl.dot(tl.trans(f.to(dt)), vd, s_p2, input_precision=PRECISION)
        z_p2 += tl.sum(f, 0)
        f = _group_feature(k_ptr, tok, offs_f, ks, scale1, ok, 3, F)
        s_p3 = tl.dot(tl.trans(f.to(dt)), vd, s_p3, input_precision=PRECISION)
        z_p3 += tl.sum(f, 0)
        f = _group_feature(k_ptr, tok, offs_f, ks, scale1, ok, 4, F)
        s_p4 = tl.dot(tl.trans(f.to(dt)), vd, s_p4, input_precision=PRECISION)
        z_p4 += tl.sum(f, 0)
        f = _group_feature(k_ptr, tok, offs_f, ks, scale1, ok, 5, F)
        s_p5 = tl.dot(tl.trans(f.to(dt)), vd, s_p5, input_precision=PRECISION)
        z_p5 += tl.sum(f, 0)
        f = _group_feature(k_ptr, tok, offs_f, ks, scale1, ok, 6, F)
        s_p6 = tl.dot(tl.trans(f.to(dt)), vd, s_p6, input_precision=PRECISION)
        z_p6 += tl.sum(f, 0)
        f = _group_feature(k_ptr, tok, offs_f, ks, scale1, ok, 7, F)
        s_p7 = tl.dot(tl.trans(f.to(dt)), vd, s_p7, input_precision=PRECISION)
        z_p7 += tl.sum(f, 0)
        f = _group_feature(k_ptr, tok, offs_f, ks, scale1, ok, 8, F)
        s_p8 = tl.dot(tl.trans(f.to(dt)), vd, s_p8, input_precision=PRECISION)
        z_p8 += tl.sum(f, 0)

    fkv = final_kv_ptr + (pid_split.to(tl.int64) * tl.num_programs(1) + pid_bh) * R * DV
    tl.store(fkv + offs_dv, s0, mask=dv_ok)
    _store_rows(fkv, 1, offs_f, offs_dv, dv_ok, s_lin, DV)
    _store_rows(fkv, 1 + F, offs_f, offs_dv, dv_ok, s_dia, DV)
    _store_rows(fkv, 1 + 2 * F, offs_f, offs_dv, dv_ok, s_p1, DV)
    _store_rows(fkv, 1 + 3 * F, offs_f, offs_dv, dv_ok, s_p2, DV)
    _store_rows(fkv, 1 + 4 * F, offs_f, offs_dv, dv_ok, s_p3, DV)
    _store_rows(fkv, 1 + 5 * F, offs_f, offs_dv, dv_ok, s_p4, DV)
    _store_rows(fkv, 1 + 6 * F, offs_f, offs_dv, dv_ok, s_p5, DV)
    _store_rows(fkv, 1 + 7 * F, offs_f, offs_dv, dv_ok, s_p6, DV)
    _store_rows(fkv, 1 + 8 * F, offs_f, offs_dv, dv_ok, s_p7, DV)
    _store_rows(fkv, 1 + 9 * F, offs_f, offs_dv, dv_ok, s_p8, DV)
    if pid_dv == 0:
        fz = final_z_ptr + (pid_split.to(tl.int64) * tl.num_programs(1) + pid_bh) * R
        tl.store(fz, z0)
        tl.store(fz + 1 + offs_f, z_lin)
        tl.store(fz + 1 + F + offs_f, z_dia)
        tl.store(fz + 1 + 2 * F + offs_f, z_p1)
        tl.store(fz + 1 + 3 * F + offs_f, z_p2)
        tl.store(fz + 1 + 4 * F + offs_f, z_p3)
        tl.store(fz + 1 + 5 * F + offs_f, z_p4)
        tl.store(fz + 1 + 6 * F + offs_f, z_p5)
        tl.store(fz + 1 + 7 * F + offs_f, z_p6)
        tl.store(fz + 1 + 8 * F + offs_f, z_p7)
        tl.store(fz + 1 + 9 * F + offs_f, z_p8)


@triton.jit
def _output_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    mask_ptr,
    chunk_kv_ptr,
    chunk_z_ptr,
    N,
    H,
    DV,
    NC,
    eps,
    scale1,
    F: tl.constexpr,
    CS: tl.constexpr,
    BT: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    HAS_MASK: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    STATE_DTYPE: tl.constexpr,
):
    """Outputs of one query tile: its chunk's stored state read with the query features, plus
    the causal scores against the keys of the same chunk up to the tile."""
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_dv = tl.program_id(2)
    b = pid_bh // H
    h = pid_bh % H
    R: tl.constexpr = 1 + 2 * F + F * (F // 2)
    R2: tl.constexpr = 0.7071067811865476
    offs_f = tl.arange(0, F)
    offs_t = tl.arange(0, BT)
    offs_dv = pid_dv * BLOCK_DV + tl.arange(0, BLOCK_DV)
    dv_ok = offs_dv < DV
    qk_base = b.to(tl.int64) * N * H * F + h * F
    v_base = b.to(tl.int64) * N * H * DV + h * DV
    dt = DOT_DTYPE
    sdt = STATE_DTYPE

    t0 = pid_t * BT
    t = t0 + offs_t
    t_ok = t < N
    tok = qk_base + t * (H * F)
    q = tl.load(q_ptr + tok[:, None] + offs_f[None, :], mask=t_ok[:, None], other=0.0).to(tl.float32)
    qs = q * scale1
    c = t0 // CS
    ckv = chunk_kv_ptr + (pid_bh.to(tl.int64) * NC + c) * R * DV
    cz = chunk_z_ptr + (pid_bh.to(tl.int64) * NC + c) * R

    # Earlier chunks: psi(q) against the stored state, group by group.
    s0 = tl.load(ckv + offs_dv, mask=dv_ok, other=0.0).to(tl.float32)
    num = tl.zeros([BT, BLOCK_DV], dtype=tl.float32) + s0[None, :]
    den = tl.zeros([BT], dtype=tl.float32) + tl.load(cz)
    num = tl.dot(qs.to(sdt), _load_rows(ckv, 1, offs_f, offs_dv, dv_ok, DV).to(sdt), num, input_precision=PRECISION)
    den += tl.sum(qs * tl.load(cz + 1 + offs_f)[None, :], 1)
    fq = qs * q * (scale1 * R2)
    num = tl.dot(fq.to(sdt), _load_rows(ckv, 1 + F, offs_f, offs_dv, dv_ok, DV).to(sdt), num, input_precision=PRECISION)
    den += tl.sum(fq * tl.load(cz + 1 + F + offs_f)[None, :], 1)
    for d in tl.static_range(1, F // 2 + 1):
        fq = _group_feature(q_ptr, tok, offs_f, qs, scale1, t_ok, d, F)
        rows = _load_rows(ckv, 1 + (d + 1) * F, offs_f, offs_dv, dv_ok, DV)
        num = tl.dot(fq.to(sdt), rows.to(sdt), num, input_precision=PRECISION)
        den += tl.sum(fq * tl.load(cz + 1 + (d + 1) * F + offs_f)[None, :], 1)

    # This chunk, causal: scores 1 + s + s^2/2 of s = q·k / sqrt(f).
    qd = qs.to(dt)
    for k0 in range(c * CS, t0 + BT, BT):
        tk = k0 + offs_t
        k_ok = tk < N
        wk = k_ok.to(tl.float32)
        if HAS_MASK:
            wk = wk * tl.load(mask_ptr + b.to(tl.int64) * N + tk, mask=k_ok, other=0).to(tl.float32)
        k = tl.load(k_ptr + qk_base + tk[:, None] * (H * F) + offs_f[None, :], mask=k_ok[:, None], other=0.0)
        v = tl.load(
            v_ptr + v_base + tk[:, None] * (H * DV) + offs_dv[None, :],
            mask=k_ok[:, None] & dv_ok[None, :],
            other=0.0,
        )
        s = tl.dot(qd, tl.trans((k.to(tl.float32) * scale1).to(dt)), input_precision=PRECISION)
        a = 1.0 + s + 0.5 * s * s
        a = tl.where(t[:, None] >= tk[None, :], a, 0.0) * wk[None, :]
        num = tl.dot(a.to(dt), v.to(dt), num, input_precision=PRECISION)
        den += tl.sum(a, 1)

    wq = t_ok.to(tl.float32)
    if HAS_MASK:
        wq = wq * tl.load(mask_ptr + b.to(tl.int64) * N + t, mask=t_ok, other=0).to(tl.float32)
    o = num / (den[:, None] + eps) * wq[:, None]
    tl.store(
        o_ptr + v_base + t[:, None] * (H * DV) + offs_dv[None, :],
        o.to(o_ptr.dtype.element_ty),
        mask=t_ok[:, None] & dv_ok[None, :],
    )


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
    """Shapes the prefill kernels handle; others run the chunked reference on the same device."""
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


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    # The stored per-chunk states enter the read-out products in the input dtype, except for fp16
    # inputs (fp32 states, tf32 products): a long sequence's sums can exceed fp16's range.
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


_LAYOUTS: dict = {}


def _cyclic_maps(f: int, device):
    """Index maps between the 273-row layout (phi) and the cyclic one (psi).

    psi[r] = wa[r] * phi[a[r]] + wb[r] * phi[b[r]] reads any state exactly (a pair's two rows are
    summed), and phi[r] = w[r] * psi[src[r]] writes a state back (the pair's rows get equal values,
    as in every state built from tokens).
    """
    key = (f, str(device))
    if key in _LAYOUTS:
        return _LAYOUTS[key]
    half = f // 2
    quad = lambda i, j: 1 + f + i * f + j  # noqa: E731
    a, b, wa, wb = [0], [0], [1.0], [0.0]
    for i in range(f):
        a.append(1 + i), b.append(0), wa.append(1.0), wb.append(0.0)
    for i in range(f):
        a.append(quad(i, i)), b.append(0), wa.append(1.0), wb.append(0.0)
    for d in range(1, half + 1):
        for i in range(f):
            j = (i + d) % f
            if 2 * d == f:
                a.append(quad(i, j)), b.append(0), wa.append(1.0), wb.append(0.0)
            else:
                a.append(quad(i, j)), b.append(quad(j, i)), wa.append(INV_SQRT2), wb.append(INV_SQRT2)
    src, w = [0] + [1 + i for i in range(f)], [1.0] * (1 + f)
    for i in range(f):
        for j in range(f):
            d = (j - i) % f
            if d == 0:
                src.append(1 + f + i), w.append(1.0)
            elif 2 * d == f:
                src.append(1 + (d + 1) * f + i), w.append(1.0)
            elif d < half:
                src.append(1 + (d + 1) * f + i), w.append(INV_SQRT2)
            else:  # the pair (j, i) at distance f - d
                src.append(1 + (f - d + 1) * f + j), w.append(INV_SQRT2)
    t = lambda x, dt=torch.long: torch.tensor(x, dtype=dt, device=device)  # noqa: E731
    maps = (t(a), t(b), t(wa, torch.float32), t(wb, torch.float32), t(src), t(w, torch.float32))
    _LAYOUTS[key] = maps
    return maps


def to_cyclic(state: LinearAttentionState) -> tuple[torch.Tensor, torch.Tensor]:
    """(kv [B*H, R, dv], z [B*H, R]) in the cyclic layout, fp32, from a 273-row state."""
    b, h, feats, dv = state.kv.shape
    f = int(round((math.sqrt(4 * feats - 3) - 1) / 2))
    a, bb, wa, wb, _, _ = _cyclic_maps(f, state.kv.device)
    kv = state.kv.float().reshape(b * h, feats, dv)
    z = state.ksum.float().reshape(b * h, feats)
    kv = kv[:, a] * wa[:, None] + kv[:, bb] * wb[:, None]
    z = z[:, a] * wa + z[:, bb] * wb
    return kv.contiguous(), z.contiguous()


def from_cyclic(kv: torch.Tensor, z: torch.Tensor, b: int, h: int, f: int) -> LinearAttentionState:
    """The 273-row state of cyclic-layout sums (inverse of :func:`to_cyclic` on token-built states)."""
    *_, src, w = _cyclic_maps(f, kv.device)
    dv = kv.shape[-1]
    return LinearAttentionState(
        (kv[:, src] * w[:, None]).reshape(b, h, -1, dv).contiguous(),
        (z[:, src] * w).reshape(b, h, -1).contiguous(),
    )


def _split_plan(n: int, splits: int, block: int) -> tuple[int, int]:
    """(splits, tokens per split), the latter a multiple of the tile so tiles never straddle."""
    tokens = triton.cdiv(triton.cdiv(max(n, 1), max(splits, 1)), block) * block
    return triton.cdiv(max(n, 1), tokens), tokens


def _scan(
    k,
    v,
    *,
    mask_u8,
    enc_len,
    init,
    store_chunks: bool,
    splits: int,
    tokens_per_split: int,
    config: ChunkConfig,
):
    """Launch the scan; returns (chunk_kv, chunk_z, final_kv [splits, B*H, R, dv], final_z)."""
    b, n, h, f = k.shape
    dv = v.shape[-1]
    rows = cyclic_rows(f)
    bh = b * h
    nc = triton.cdiv(max(n, 1), config.chunk)
    block_dv = min(config.scan_block_dv, max(16, triton.next_power_of_2(dv)))
    final_kv = torch.empty(splits, bh, rows, dv, device=k.device, dtype=torch.float32)
    final_z = torch.empty(splits, bh, rows, device=k.device, dtype=torch.float32)
    if store_chunks:
        chunk_kv = torch.empty(bh, nc, rows, dv, device=k.device, dtype=_state_dtype(v.dtype))
        chunk_z = torch.empty(bh, nc, rows, device=k.device, dtype=torch.float32)
    else:
        chunk_kv = chunk_z = final_kv
    grid = (triton.cdiv(dv, block_dv), bh, splits)
    _scan_kernel[grid](
        k,
        v,
        mask_u8 if mask_u8 is not None else k,
        enc_len if enc_len is not None else k,
        init[0] if init is not None else final_kv,
        init[1] if init is not None else final_z,
        chunk_kv,
        chunk_z,
        final_kv,
        final_z,
        n,
        h,
        dv,
        nc,
        tokens_per_split,
        f**-0.25,
        F=f,
        CS=config.chunk,
        BT=config.block_t,
        BLOCK_DV=block_dv,
        HAS_MASK=mask_u8 is not None,
        HAS_ENC_LEN=enc_len is not None,
        HAS_INIT=init is not None,
        STORE_CHUNKS=store_chunks,
        PRECISION=_precision(v.dtype),
        DOT_DTYPE=_dot_dtype(v.dtype),
        num_warps=config.scan_warps,
        num_stages=config.num_stages,
    )
    return chunk_kv, chunk_z, final_kv, final_z


def _check_config(config: ChunkConfig) -> None:
    if config.chunk % config.block_t:
        raise ValueError(f"chunk={config.chunk} must be a multiple of block_t={config.block_t}")


def _prefill_cyclic(q, k, v, *, mask=None, eps=1e-12, init=None, config: ChunkConfig):
    """Causal prefill from an initial cyclic-layout state; returns (out, final kv, final z)."""
    _check_config(config)
    b, n, h, f = q.shape
    dv = v.shape[-1]
    mask_u8 = mask.to(torch.uint8).contiguous() if mask is not None else None
    chunk_kv, chunk_z, final_kv, final_z = _scan(
        k,
        v,
        mask_u8=mask_u8,
        enc_len=None,
        init=init,
        store_chunks=True,
        splits=1,
        tokens_per_split=max(n, 1),
        config=config,
    )
    out = torch.empty_like(v)
    if n:
        block_dv = min(config.block_dv, max(16, triton.next_power_of_2(dv)))
        grid = (triton.cdiv(n, config.block_t), b * h, triton.cdiv(dv, block_dv))
        _output_kernel[grid](
            q,
            k,
            v,
            out,
            mask_u8 if mask_u8 is not None else q,
            chunk_kv,
            chunk_z,
            n,
            h,
            dv,
            chunk_kv.shape[1],
            eps,
            f**-0.25,
            F=f,
            CS=config.chunk,
            BT=config.block_t,
            BLOCK_DV=block_dv,
            HAS_MASK=mask_u8 is not None,
            PRECISION=_precision(v.dtype),
            DOT_DTYPE=_dot_dtype(v.dtype),
            STATE_DTYPE=_dot_dtype(_state_dtype(v.dtype)) if v.dtype == torch.bfloat16 else tl.float32,
            num_warps=config.num_warps,
            num_stages=config.num_stages,
        )
    return out, final_kv[0], final_z[0]


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
):
    """Causal Based prefill (scan + output launches); returns (out, final state or None)."""
    if not supports(q):
        return reference.based_chunked(
            q, k, v, mask=mask, eps=eps, initial_state=initial_state, output_final_state=output_final_state
        )
    config = config or DEFAULT_CONFIG
    b, n, h, f = q.shape
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    init = to_cyclic(initial_state) if initial_state is not None else None
    out, kv, z = _prefill_cyclic(q, k, v, mask=mask, eps=eps, init=init, config=config)
    return out, (from_cyclic(kv, z, b, h, f) if output_final_state else None)


def _encoder_cyclic(k_enc, v_enc, *, enc_lengths, mask=None, config: ChunkConfig):
    """Sum of psi(k_enc) ⊗ v_enc over encoder positions, parallel over token splits."""
    _check_config(config)
    b, n, h, f = k_enc.shape
    dv = v_enc.shape[-1]
    k_enc, v_enc = k_enc.contiguous(), v_enc.contiguous()
    block_dv = min(config.scan_block_dv, max(16, triton.next_power_of_2(dv)))
    programs = triton.cdiv(dv, block_dv) * b * h
    # Enough programs to fill the GPU several times over, but at least ~1k tokens each.
    want = max(1, min(triton.cdiv(n, 1024), triton.cdiv(8 * _num_sms(k_enc.device), programs)))
    splits, tokens_per_split = _split_plan(n, want, config.block_t)
    _, _, kv, z = _scan(
        k_enc,
        v_enc,
        mask_u8=mask.to(torch.uint8).contiguous() if mask is not None else None,
        enc_len=enc_lengths.to(device=k_enc.device, dtype=torch.int32).contiguous(),
        init=None,
        store_chunks=False,
        splits=splits,
        tokens_per_split=tokens_per_split,
        config=config,
    )
    if splits == 1:
        return kv[0], z[0]
    return kv.sum(0), z.sum(0)


def encoder_state(
    k_enc, v_enc, *, enc_lengths, mask=None, config: ChunkConfig | None = None
) -> LinearAttentionState:
    """Sum of phi(k_enc) ⊗ v_enc over encoder positions (the 273-row layout)."""
    b, _, h, f = k_enc.shape
    kv, z = _encoder_cyclic(k_enc, v_enc, enc_lengths=enc_lengths, mask=mask, config=config or DEFAULT_CONFIG)
    return from_cyclic(kv, z, b, h, f)


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
):
    """Prefix linear attention: the encoder reduction, then the causal prefill started from it."""
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
    b, n, h, f = q.shape
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    enc = _encoder_cyclic(k_enc, v_enc, enc_lengths=enc_lengths, mask=mask, config=config)
    out, kv, z = _prefill_cyclic(q, k, v, mask=mask, eps=eps, init=enc, config=config)
    return out, (from_cyclic(kv, z, b, h, f) if output_final_state else None)


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
