"""Plain-PyTorch references of the decode step's normalisations, with transformers' roundings.

transformers' Mamba / Mamba-2 blocks keep the residual stream in float32 (``residual_in_fp32``)
while the norm reads it rounded to the weights' dtype, and the final norm reads it unrounded;
these references reproduce each cast, so a decode step built from them gives the same numbers
as the model's own modules.
"""

from __future__ import annotations

import torch


def residual_rms_norm_reference(
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    delta: torch.Tensor | None = None,
    *,
    residual_dtype: torch.dtype,
    norm_dtype: torch.dtype,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(new residual, normed): ``s = residual + delta`` kept in ``residual_dtype``; the norm reads
    ``s`` as ``norm_dtype`` (an RMSNorm module called on ``s.to(norm_dtype)``), multiplies by
    ``weight`` in the promoted dtype, and the result is cast to ``out_dtype``."""
    s = residual.to(residual_dtype)
    if delta is not None:
        s = (s + delta).to(residual_dtype)
    h = s.to(norm_dtype).to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = (h * torch.rsqrt(variance + eps)).to(norm_dtype)
    return s, (weight * h).to(out_dtype)


def gated_rms_norm_reference(
    x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float, group_size: int
) -> torch.Tensor:
    """Mamba-2's gated RMSNorm (norm after the gate): ``x * silu(gate)`` normalised over groups of
    ``group_size`` channels in float32, times ``weight``; x's dtype out."""
    dtype = x.dtype
    h = x.to(torch.float32) * torch.nn.functional.silu(gate.to(torch.float32))
    *prefix, width = h.shape
    grouped = h.view(*prefix, width // group_size, group_size)
    grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + eps)
    return weight * grouped.view(*prefix, width).to(dtype)
