"""A linear layer on one row: the projections of a batch-1 decode step.

``linear(x, weight, bias)`` is ``F.linear``. On CUDA, for a 16-bit input of one row it runs the
Triton kernel of :mod:`.triton`, which streams the weight faster than cuBLAS's one-row kernels;
everything else (more rows, float32, CPU, and any call that wants gradients) runs ``F.linear``
itself. ``JRT_KERNELS`` overrides the choice as for every op (:mod:`jrt_prompt.kernels.dispatch`):
``triton`` runs the kernel for any dtype (on CPU with ``TRITON_INTERPRET=1``, for tests),
``reference`` never.
"""

from __future__ import annotations

import torch

from ..dispatch import backend_for, kernel_choice
from .reference import linear_reference

__all__ = ["linear", "linear_reference"]

_HALF = (torch.bfloat16, torch.float16)


def _kernel_fits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    if x.dim() == 0 or x.numel() != x.shape[-1] or x.shape[-1] == 0:  # one row (the common miss: first)
        return False
    # The kernel has no backward: with gradients wanted F.linear runs (training, fine-tuning).
    wants_grad = x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    if torch.is_grad_enabled() and wants_grad:
        return False
    if weight.dim() != 2 or x.shape[-1] != weight.shape[1] or weight.stride(1) != 1:
        return False
    if x.dtype != weight.dtype or x.device != weight.device:
        return False
    if bias is not None and (bias.dtype != x.dtype or bias.dim() != 1 or bias.stride(0) != 1):
        return False
    if backend_for(x) != "triton":
        return False
    return kernel_choice() == "triton" or x.dtype in _HALF


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` for x [..., in], weight [out, in], bias [out] -> [..., out]."""
    if not _kernel_fits(x, weight, bias):
        return linear_reference(x, weight, bias)
    from . import triton as kernels

    row = x.reshape(-1)
    if row.stride(0) != 1:
        row = row.contiguous()
    return kernels.row_linear(row, weight, bias).view(*x.shape[:-1], weight.shape[0])
