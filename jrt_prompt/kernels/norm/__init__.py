"""Normalisations of the recurrent decode step: residual add + RMSNorm, and Mamba-2's gated RMSNorm.

Rows are [rows, channels] with a unit stride along channels. Which implementation runs is
decided by :func:`jrt_prompt.kernels.dispatch.backend_for` (Triton on CUDA, the PyTorch reference
on CPU, ``JRT_KERNELS`` overrides). Both keep transformers' roundings (see :mod:`.reference`).
"""

from __future__ import annotations

import torch

from jrt_prompt.errors import JRTError

from ..dispatch import backend_for
from . import reference

__all__ = ["gated_rms_norm", "residual_rms_norm"]


def _rows(name: str, t: torch.Tensor, width: int) -> None:
    if t.dim() != 2 or t.shape[1] != width or t.stride(1) != 1:
        raise JRTError(
            f"{name} must be [rows, {width}] with unit stride along channels; got {tuple(t.shape)}"
        )


def residual_rms_norm(
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    delta: torch.Tensor | None = None,
    *,
    residual_dtype: torch.dtype | None = None,
    norm_dtype: torch.dtype | None = None,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``s = residual + delta`` (in ``residual_dtype``) and ``RMSNorm(s.to(norm_dtype)) * weight``
    (in ``out_dtype``); the dtypes default to residual's, weight's and weight's."""
    d = weight.shape[0]
    _rows("residual", residual, d)
    if delta is not None:
        _rows("delta", delta, d)
    residual_dtype = residual_dtype or residual.dtype
    norm_dtype = norm_dtype or weight.dtype
    out_dtype = out_dtype or weight.dtype
    args = dict(residual_dtype=residual_dtype, norm_dtype=norm_dtype, out_dtype=out_dtype)
    if backend_for(residual) == "triton" and norm_dtype in (out_dtype, torch.float32):
        from . import triton as kernels

        return kernels.residual_rms_norm(residual, weight, eps, delta, **args)
    return reference.residual_rms_norm_reference(residual, weight, eps, delta, **args)


def gated_rms_norm(
    x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float, group_size: int
) -> torch.Tensor:
    """Mamba-2's ``MambaRMSNormGated(x, gate)``: x, gate [rows, width], ``group_size`` divides width."""
    width = weight.shape[0]
    _rows("x", x, width)
    _rows("gate", gate, width)
    if group_size <= 0 or width % group_size:
        raise JRTError(f"group_size {group_size} must divide the {width} channels")
    if backend_for(x) == "triton":
        from . import triton as kernels

        return kernels.gated_rms_norm(x, gate, weight, eps, group_size)
    return reference.gated_rms_norm_reference(x, gate, weight, eps, group_size)
