"""Mamba-1 ops: selective scan, causal depthwise conv1d, and their one-token updates.

Layouts are transformers' ``MambaMixer`` ones (channels before time, see :mod:`.reference`); every
op takes the recurrent state it continues from and gives back the state it ends in, so a prefill
can continue and a decode can start from it. Which implementation runs is decided by
:func:`jrt_prompt.kernels.dispatch.backend_for` (Triton on CUDA, the PyTorch reference on CPU,
``JRT_KERNELS`` overrides).
"""

from __future__ import annotations

import torch

from jrt_prompt.errors import JRTError

from ..dispatch import backend_for
from . import reference

__all__ = ["causal_conv1d", "causal_conv1d_update", "selective_scan", "selective_state_update"]


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise JRTError(message)


def selective_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
):
    """Mamba-1 selective scan over x [batch, d, length]; returns y (and the float32 state [batch, d, n]).

    Left padding is handled as transformers' mixer does it: padded positions carry x = 0, so a zero
    state stays zero through them.
    """
    _need(x.dim() == 3, f"x must be [batch, d, length]; got {tuple(x.shape)}")
    batch, d, length = x.shape
    _need(A.dim() == 2 and A.shape[0] == d, f"A must be [d={d}, n]; got {tuple(A.shape)}")
    n = A.shape[1]
    _need(tuple(dt.shape) == (batch, d, length), f"dt must be {(batch, d, length)}; got {tuple(dt.shape)}")
    for name, t in (("B", B), ("C", C)):
        _need(tuple(t.shape) == (batch, n, length), f"{name} must be {(batch, n, length)}; got {tuple(t.shape)}")
    if z is not None:
        _need(tuple(z.shape) == (batch, d, length), f"z must be {(batch, d, length)}; got {tuple(z.shape)}")
    if initial_state is not None:
        _need(
            tuple(initial_state.shape) == (batch, d, n),
            f"initial_state must be {(batch, d, n)}; got {tuple(initial_state.shape)}",
        )
    if backend_for(x) == "triton":
        from . import triton as kernels

        return kernels.selective_scan(
            x, dt, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_last_state
        )
    return reference.selective_scan_reference(
        x, dt, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_last_state
    )


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """One decode step: x, dt, z [batch, d], B, C [batch, n]; ``state`` [batch, d, n] is updated in place."""
    _need(x.dim() == 2, f"x must be [batch, d] for one token; got {tuple(x.shape)}")
    _need(
        tuple(state.shape) == (x.shape[0], x.shape[1], A.shape[1]),
        f"state must be {(x.shape[0], x.shape[1], A.shape[1])}; got {tuple(state.shape)}",
    )
    if backend_for(x) == "triton":
        from . import triton as kernels

        return kernels.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    return reference.selective_state_update_reference(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal depthwise conv of x [batch, d, length] with weight [d, kernel]; ``activation`` None or "silu".

    ``initial_state`` [batch, d, >= kernel - 1] holds the inputs before the first token (its last
    kernel - 1 columns are used); without it they are zeros.
    """
    _need(x.dim() == 3, f"x must be [batch, d, length]; got {tuple(x.shape)}")
    _need(
        weight.dim() == 2 and weight.shape[0] == x.shape[1],
        f"weight must be [d={x.shape[1]}, kernel]; got {tuple(weight.shape)}",
    )
    _need(activation in (None, "silu", "swish"), f"activation {activation!r} is not supported; use None or 'silu'")
    if initial_state is not None:
        _need(
            initial_state.dim() == 3
            and initial_state.shape[:2] == x.shape[:2]
            and initial_state.shape[-1] >= weight.shape[-1] - 1,
            f"initial_state must be [batch, d, >= kernel - 1]; got {tuple(initial_state.shape)}",
        )
    if backend_for(x) == "triton":
        from . import triton as kernels

        return kernels.causal_conv1d(x, weight, bias, activation, initial_state)
    return reference.causal_conv1d_reference(x, weight, bias, activation, initial_state)


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """One token per row, x [batch, d]; ``conv_state`` [batch, d, width >= kernel] rolls in place."""
    _need(x.dim() == 2, f"x must be [batch, d] for one token; got {tuple(x.shape)}")
    _need(
        conv_state.dim() == 3 and conv_state.shape[:2] == x.shape and conv_state.shape[-1] >= weight.shape[-1],
        f"conv_state must be [batch, d, width >= kernel]; got {tuple(conv_state.shape)}",
    )
    _need(activation in (None, "silu", "swish"), f"activation {activation!r} is not supported; use None or 'silu'")
    if backend_for(x) == "triton":
        from . import triton as kernels

        return kernels.causal_conv1d_update(x, conv_state, weight, bias, activation)
    return reference.causal_conv1d_update_reference(x, conv_state, weight, bias, activation)
