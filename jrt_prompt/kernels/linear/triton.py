"""Triton kernel for a linear layer applied to one row (a batch-1 decode step).

A batch-1 decode step of a 1.3B model reads every weight once per token, so its time is the time
to stream the weights from memory. cuBLAS's one-row kernels stream them at about half the copy
bandwidth on an H200 (docs/benchmarks.md, decode profile). Here each program owns a narrow band
of ``BLOCK_N`` output rows and reads those rows of the weight whole, ``BLOCK_K`` elements at a
time, with the loads of several iterations in flight (``num_stages``): many programs per
multiprocessor and long contiguous reads keep enough bytes in flight to approach the bandwidth.
The products are summed in float32 and rounded once to the input's dtype, as cuBLAS does.

Two rows or more go to cuBLAS (``F.linear``): from two rows on its tiled kernels read each weight
once as well and were faster than a ``tl.dot`` variant of this kernel at every shape measured.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _row_linear_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    N, K, s_wn,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * s_wn
    y = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        w = tl.load(w_rows + offs_k[None, :], mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        x = tl.load(x_ptr + offs_k, mask=mask_k, other=0.0)
        y += tl.sum(w.to(tl.float32) * x.to(tl.float32)[None, :], axis=1)
    if HAS_BIAS:
        y += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=mask_n)


def pick_config(k: int) -> dict:
    """Tiles and warps for a weight of ``k`` inputs, from ``scripts/bench_linear.py --sweep`` (H200, weights
    read from memory): two output rows a program and 1,024–2,048-wide reads along ``k`` were
    the fastest on every projection of the benchmark models with ``k`` ≥ 1,792; a short ``k``
    (Mamba's dt projection, 128) gets more rows a program so that each still reads ≥ 4 KB."""
    block_k = min(triton.next_power_of_2(k), 2048)
    block_n = min(16, max(2, triton.next_power_of_2(max(1, 2048 // block_k))))
    return dict(BLOCK_N=block_n, BLOCK_K=block_k, num_warps=8 if block_k >= 2048 else 4, num_stages=4)


def row_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, config: dict | None = None):
    """x [k] or [1, k] (unit stride), weight [n, k] contiguous along k -> [1, n] in x's dtype."""
    k = x.shape[-1]
    n = weight.shape[0]
    config = config or pick_config(k)
    y = torch.empty((1, n), dtype=x.dtype, device=x.device)
    _row_linear_kernel[(triton.cdiv(n, config["BLOCK_N"]),)](
        x, weight, bias if bias is not None else weight, y,
        n, k, weight.stride(0),
        HAS_BIAS=bias is not None, **config,
    )
    return y
