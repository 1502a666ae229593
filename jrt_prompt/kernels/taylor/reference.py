"""Plain-PyTorch references shared by Based and PLA: the Taylor feature map, state sums, the decode step.

These are the readable statements of the math the Triton kernels compute, and the CPU path of
the model code. Layout everywhere is ``[batch, seq, heads, dim]``. The prefill references are
:mod:`jrt_prompt.kernels.based.reference` and :mod:`jrt_prompt.kernels.pla.reference`.

Taylor feature map on feature dimension ``f`` (273 features for ``f = 16``)::

    phi(x) = [1, x / f**(1/4), flatten(x ⊗ x) / (sqrt(2) * sqrt(f))]

so that ``phi(q) · phi(k) = 1 + s + s**2 / 2`` with ``s = q · k / sqrt(f)``: the chunked form and
the kernels use this identity inside a chunk and keep only the running state expanded.

Masking: a position whose mask is False contributes nothing (not even the constant feature) to
any state or output, and its own output is 0.
"""

from __future__ import annotations

import math

import torch

from .state import LinearAttentionState


def taylor_feature_map(x: torch.Tensor) -> torch.Tensor:
    """``[..., f] -> [..., 1 + f + f*f]``: constant, linear and full (row-major) quadratic terms."""
    f = x.shape[-1]
    quadratic = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2) / (math.sqrt(2.0) * math.sqrt(f))
    return torch.cat([torch.ones_like(x[..., :1]), x / f**0.25, quadratic], dim=-1)


def _up(x: torch.Tensor) -> torch.Tensor:
    """Compute dtype of the references: fp32, or fp64 when the input already is fp64."""
    return x.double() if x.dtype == torch.float64 else x.float()


def _weights(mask: torch.Tensor | None, b: int, n: int, device, dtype=torch.float32) -> torch.Tensor:
    """Per-token weight [b, n] in fp32: 1 for real tokens, 0 for masked ones."""
    if mask is None:
        return torch.ones(b, n, device=device, dtype=dtype)
    return mask.to(device=device, dtype=dtype)


def empty_state(b: int, h: int, f: int, dv: int, device, dtype=torch.float32) -> LinearAttentionState:
    feats = 1 + f + f * f
    return LinearAttentionState(
        kv=torch.zeros(b, h, feats, dv, device=device, dtype=dtype),
        ksum=torch.zeros(b, h, feats, device=device, dtype=dtype),
    )


def state_from_tokens(k: torch.Tensor, v: torch.Tensor, weight: torch.Tensor) -> LinearAttentionState:
    """Sum of ``w_m * phi(k_m) ⊗ v_m`` and ``w_m * phi(k_m)`` over the sequence (fp32)."""
    phi_k = taylor_feature_map(_up(k)) * weight[:, :, None, None].to(_up(k).dtype)  # [b, n, h, F]
    kv = torch.einsum("bnhf,bnhd->bhfd", phi_k, _up(v))
    return LinearAttentionState(kv=kv, ksum=phi_k.sum(1))


# ---------------------------------------------------------------------------------------------
# Recurrent decode step.
# ---------------------------------------------------------------------------------------------


def step_reference(q, k, v, state: LinearAttentionState, *, eps=1e-12):
    """One token: ``kv += phi(k) ⊗ v``, ``ksum += phi(k)`` in place, then the normalised read-out."""
    phi_k = taylor_feature_map(_up(k))  # [b, h, F]
    phi_q = taylor_feature_map(_up(q))
    state.kv.add_(phi_k.unsqueeze(-1) * _up(v).unsqueeze(-2))
    state.ksum.add_(phi_k)
    num = torch.einsum("bhf,bhfd->bhd", phi_q, state.kv)
    den = torch.einsum("bhf,bhf->bh", phi_q, state.ksum)
    return (num / (den[..., None] + eps)).to(v.dtype)
