"""Mamba-2 SSD: the chunked scan for prefill and the one-token state update for decode.

Both ops take transformers' argument names (``mamba2_chunk_scan`` and
``mamba2_selective_state_update`` of ``transformers.models.mamba2.modeling_mamba2``) and return
what those return, so they can stand in for them. Layout: x [batch, seq, heads, head_dim],
dt [batch, seq, heads], A [heads], B/C [batch, seq, groups, state], states
[batch, heads, head_dim, state] float32.

Which code runs: :func:`jrt_prompt.kernels.dispatch.backend_for` picks the Triton kernels (CUDA
tensors) or the PyTorch reference (``JRT_KERNELS`` overrides). On the Triton side the chunked scan
has two implementations: this project's kernels (``"triton"``, the default) and fla's
``chunk_simple_gla`` (``"fla"``); the ``implementation`` argument chooses, else ``JRT_SSD``, else
the default.
"""

from __future__ import annotations

import os

import torch

from jrt_prompt.errors import JRTError

from ..dispatch import backend_for
from . import reference

IMPLEMENTATIONS = ("triton", "fla")
DEFAULT_IMPLEMENTATION = "triton"
_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)

__all__ = ["DEFAULT_IMPLEMENTATION", "IMPLEMENTATIONS", "ssd_chunk_scan", "ssd_implementation", "ssd_state_update"]


def ssd_implementation(implementation: str | None = None) -> str:
    """'triton' or 'fla' for the chunked scan: the argument, else ``JRT_SSD``, else the default."""
    name = implementation if implementation is not None else os.environ.get("JRT_SSD", "")
    name = name.strip().lower() or DEFAULT_IMPLEMENTATION
    if name not in IMPLEMENTATIONS:
        source = "implementation" if implementation is not None else "JRT_SSD"
        raise JRTError(f"{source}={name!r} is not an SSD implementation; use 'triton' or 'fla'")
    return name


def _shape(t) -> tuple:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def _need(name: str, t, shape: tuple, what: str):
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
        raise JRTError(f"{name} must be {what} = {shape}; got {_shape(t)}")


def _same_device(x: torch.Tensor, **tensors):
    for name, t in tensors.items():
        if t is not None and t.device != x.device:
            raise JRTError(f"{name} is on {t.device}, the inputs on {x.device}; move it to {x.device}")


def _check_dtypes(**tensors):
    for name, t in tensors.items():
        if t is not None and t.dtype not in _DTYPES:
            raise JRTError(f"{name} has dtype {t.dtype}; use float32, bfloat16 or float16")


def _no_float64(x, **tensors):
    for name, t in {"hidden_states": x, **tensors}.items():
        if t is not None and t.dtype == torch.float64:
            raise JRTError(f"{name} is float64, which only the reference takes; pass float32 or set JRT_KERNELS=reference")


def _check_scan(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_limit, kwargs):
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise JRTError(f"hidden_states must be 4-D [batch, seq, heads, head_dim]; got {_shape(x)}")
    b, l, h, p = x.shape
    if l == 0:
        raise JRTError("hidden_states has no tokens (seq = 0); pass at least one token")
    if not isinstance(B, torch.Tensor) or B.dim() != 4 or B.shape[:2] != (b, l):
        raise JRTError(f"B must be [batch, seq, groups, state] with batch, seq = {(b, l)}; got {_shape(B)}")
    g, n = B.shape[2], B.shape[3]
    if g == 0 or h % g:
        raise JRTError(f"B has {g} groups, which must divide the {h} heads; pass B with a divisor of {h} groups")
    _need("C", C, (b, l, g, n), "[batch, seq, groups, state] like B")
    _need("dt", dt, (b, l, h), "[batch, seq, heads]")
    _need("A", A, (h,), "[heads]")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise JRTError(f"chunk_size must be a positive int; got {chunk_size!r}")
    if D is not None and (not isinstance(D, torch.Tensor) or tuple(D.shape) not in ((h,), (h, p))):
        raise JRTError(f"D must be [heads] = {(h,)} or [heads, head_dim] = {(h, p)}; got {_shape(D)}")
    if dt_bias is not None:
        _need("dt_bias", dt_bias, (h,), "[heads]")
    if z is not None:
        _need("z", z, (b, l, h, p), "[batch, seq, heads, head_dim] like hidden_states")
    if initial_states is not None:
        _need("initial_states", initial_states, (b, h, p, n), "[batch, heads, head_dim, state]")
    try:
        lo, hi = (float(v) for v in dt_limit)
    except (TypeError, ValueError):
        raise JRTError(f"dt_limit must be a pair (min, max) of floats; got {dt_limit!r}") from None
    if not lo <= hi:
        raise JRTError(f"dt_limit must have min <= max; got {dt_limit!r}")
    for name in ("seq_idx", "cu_seqlens"):
        if kwargs.get(name) is not None:
            raise JRTError(f"{name} (packed sequences) is not supported by ssd_chunk_scan; pass one sequence per batch row")
    if kwargs.get("return_varlen_states"):
        raise JRTError("return_varlen_states is not supported by ssd_chunk_scan; pass return_varlen_states=False")
    if not (x.dtype == B.dtype == C.dtype):
        raise JRTError(f"hidden_states, B and C must share one dtype; got {x.dtype}, {B.dtype}, {C.dtype}")
    _check_dtypes(hidden_states=x, dt=dt, A=A, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states)
    _same_device(x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states)
    return lo, hi


def ssd_chunk_scan(
    hidden_states: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    return_final_states: bool = False,
    implementation: str | None = None,
    **kwargs,
):
    """Mamba-2's chunked SSD scan, a drop-in for transformers' ``mamba2_chunk_scan``.

    hidden_states [b, l, h, p], dt [b, l, h], A [h] (negative), B/C [b, l, g, n] with g dividing h;
    D [h] (or [h, p]) skip, z [b, l, h, p] gate (y * silu(z)), dt_bias [h], dt_softplus, dt clamped to
    dt_limit, initial_states [b, h, p, n]. Returns y [b, l, h, p] in hidden_states' dtype, and
    with return_final_states also the final state [b, h, p, n] float32. Other keyword arguments
    that transformers' mixer forwards are accepted and ignored; packed sequences (seq_idx,
    cu_seqlens) are refused.
    """
    lo, hi = _check_scan(hidden_states, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_limit, kwargs)
    args = dict(
        D=D, z=z, dt_bias=dt_bias, initial_states=initial_states, dt_softplus=bool(dt_softplus),
        dt_limit=(lo, hi), return_final_states=bool(return_final_states),
    )
    name = ssd_implementation(implementation)
    if backend_for(hidden_states) == "reference":
        return reference.ssd_chunk_scan(hidden_states, dt, A, B, C, chunk_size, **args)
    _no_float64(hidden_states, dt=dt, A=A, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states)
    if name == "fla":
        from . import fla

        return fla.ssd_chunk_scan(hidden_states, dt, A, B, C, chunk_size, **args)
    from . import triton as triton_ssd

    return triton_ssd.ssd_chunk_scan(hidden_states, dt, A, B, C, chunk_size, **args)


def _per_head_param(name: str, t, h: int, p: int):
    """[h] or [h, p] -> an [h, p] view (no copy)."""
    if t is None:
        return None
    if isinstance(t, torch.Tensor) and tuple(t.shape) == (h,):
        return t[:, None].expand(h, p)
    _need(name, t, (h, p), "[heads, head_dim] (or [heads])")
    return t


def ssd_state_update(
    state: torch.Tensor,
    hidden_states: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    z: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor:
    """One decode step of Mamba-2, a drop-in for transformers' ``mamba2_selective_state_update``.

    state [b, h, p, n] is updated in place (its dtype kept; the math is float32). hidden_states,
    dt, z: [b, h, p]; A: [h, p, n] (or [h]); B, C: [b, g, n]; D, dt_bias: [h, p] (or [h]).
    Stride-0 ``expand``ed views, as transformers' mixer passes, are read as they are. Returns
    y [b, h, p] in hidden_states' dtype. ``state_batch_indices`` is refused.
    """
    x = hidden_states
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise JRTError(f"hidden_states must be 3-D [batch, heads, head_dim]; got {_shape(x)}")
    b, h, p = x.shape
    if not isinstance(B, torch.Tensor) or B.dim() != 3 or B.shape[0] != b:
        raise JRTError(f"B must be [batch, groups, state] with batch = {b}; got {_shape(B)}")
    g, n = B.shape[1], B.shape[2]
    if g == 0 or h % g:
        raise JRTError(f"B has {g} groups, which must divide the {h} heads; pass B with a divisor of {h} groups")
    _need("C", C, (b, g, n), "[batch, groups, state] like B")
    _need("state", state, (b, h, p, n), "[batch, heads, head_dim, state]")
    _need("dt", dt, (b, h, p), "[batch, heads, head_dim]")
    if isinstance(A, torch.Tensor) and tuple(A.shape) == (h,):
        A = A[:, None, None].expand(h, p, n)
    _need("A", A, (h, p, n), "[heads, head_dim, state] (or [heads])")
    D = _per_head_param("D", D, h, p)
    dt_bias = _per_head_param("dt_bias", dt_bias, h, p)
    if z is not None:
        _need("z", z, (b, h, p), "[batch, heads, head_dim] like hidden_states")
    if kwargs.get("state_batch_indices") is not None:
        raise JRTError("state_batch_indices is not supported by ssd_state_update; pass the state rows in batch order")
    if not state.dtype.is_floating_point or state.dtype not in _DTYPES:
        raise JRTError(f"state has dtype {state.dtype}; use a float32 state")
    _check_dtypes(hidden_states=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    _same_device(x, state=state, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    args = dict(D=D, z=z, dt_bias=dt_bias, dt_softplus=bool(dt_softplus))
    if backend_for(x) == "reference":
        return reference.ssd_state_update(state, x, dt, A, B, C, **args)
    _no_float64(x, state=state, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    from . import triton as triton_ssd

    return triton_ssd.ssd_state_update(state, x, dt, A, B, C, **args)
