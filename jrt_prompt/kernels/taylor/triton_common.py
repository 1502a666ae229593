"""Triton helpers the Taylor kernels share.

Device side (``@triton.jit``), used by the chunked walks of Based's prefill, PLA's encoder
reduction and the normaliser pass: a program's token range, the loads of a chunk's keys (and
values), the intra-chunk scores. Host side: which inputs the chunked kernels take, the products'
precision and operand dtype, the split plan over the sequence, the pair tables of the symmetric
quadratic features.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .state import LinearAttentionState


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
