"""The normaliser of Based's prefill as its own Triton pass, and its pieces the prefill kernels share.

The normaliser (z0, z1 [f], Z2 [f, f], fp32: the running sum of phi(k) with its quadratic part
as an f x f matrix) runs before the prefill kernel as many short programs over blocks of tokens
(_normaliser_kernel, exact tensor-core products), and the prefill kernel reads each token's
denominator. ``ChunkConfig(normaliser_block=0)`` carries it inside the prefill kernel's walk
instead (the helpers below, its two small products per chunk as split bf16 tensor-core products,
_split_dot), which measured slower because those products sit on the walk's serial path.
PLA's encoder reduction takes its normaliser from the same pass. Measured figures:
docs/benchmarks.md.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..taylor.config import ChunkConfig
from ..taylor.triton_common import _dot_dtype, _load_keys, _precision, _token_range


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


# chunk of _normaliser_kernel (its blocks are multiples of it): one compiled shape whatever the
# prefill kernel's chunk, since a token's denominator does not depend on the chunking
NORMALISER_CHUNK = 64
NORMALISER_SUMS_CHUNK = 256


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


def _causal_normaliser(q, k, *, mask_u8, init_ksum, config: ChunkConfig):
    """(den, total ksum) of the causal pass by the normaliser pass."""
    # fmt: off
    return _normaliser_pass(q, k, mask_u8=mask_u8, enc_len=None, init_ksum=init_ksum,
                            block=config.normaliser_block, want_den=True, num_warps=config.normaliser_warps)
