"""Plain-PyTorch references of Mamba-1's selective scan and causal depthwise conv1d.

The layouts are those of transformers' ``MambaMixer`` (channels before time):
x, dt, z ``[batch, d, length]``, A ``[d, n]``, B and C ``[batch, n, length]``, the SSM state
``[batch, d, n]`` and the conv state ``[batch, d, kernel]``. All arithmetic is float32; outputs take
x's dtype, states stay float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _discretise_dt(dt: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    dt = dt.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()[..., None]
    return F.softplus(dt) if delta_softplus else dt


def selective_scan_reference(
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
    """``h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t``, ``y_t = C_t h_t + D x_t``, gated by ``silu(z)``.

    A loop over time (one step per token): slow, and the definition the kernels are checked against.
    """
    batch, d, length = x.shape
    dt = _discretise_dt(dt, delta_bias, delta_softplus)
    A = A.float()
    xf, Bf, Cf = x.float(), B.float(), C.float()
    h = (
        initial_state.float().clone()
        if initial_state is not None
        else torch.zeros(batch, d, A.shape[1], dtype=torch.float32, device=x.device)
    )
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, :, t, None] * A)
        h = decay * h + (dt[:, :, t] * xf[:, :, t])[:, :, None] * Bf[:, None, :, t]
        ys.append((h * Cf[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else xf.new_zeros(batch, d, 0)
    if D is not None:
        y = y + xf * D.float()[None, :, None]
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(x.dtype)
    return (y, h) if return_last_state else y


def selective_state_update_reference(
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
    """One token: x, dt, z ``[batch, d]``, B, C ``[batch, n]``; ``state`` [batch, d, n] updated in place."""
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    h = torch.exp(dt[..., None] * A.float()) * state.float() + (dt * x.float())[..., None] * B.float()[:, None]
    state.copy_(h.to(state.dtype))
    y = (h * C.float()[:, None]).sum(-1)
    if D is not None:
        y = y + x.float() * D.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype)


def causal_conv1d_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
) -> torch.Tensor:
    """Depthwise causal conv of x ``[batch, d, length]`` with weight ``[d, kernel]``.

    ``initial_state`` ``[batch, d, kernel - 1]`` holds the inputs before the first token (zeros when
    absent). ``activation`` is None or ``"silu"``.
    """
    kernel = weight.shape[-1]
    past = (
        initial_state.float()
        if initial_state is not None
        else x.new_zeros(x.shape[0], x.shape[1], kernel - 1, dtype=torch.float32)
    )
    full = torch.cat([past[..., -(kernel - 1) :] if kernel > 1 else past[..., :0], x.float()], dim=-1)
    out = F.conv1d(full, weight.float()[:, None, :], bias.float() if bias is not None else None, groups=x.shape[1])
    if activation in ("silu", "swish"):
        out = F.silu(out)
    return out.to(x.dtype)


def causal_conv1d_update_reference(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """One token per row: x ``[batch, d]``; ``conv_state`` [batch, d, width] (the last inputs) rolls in place."""
    width = conv_state.shape[-1]
    kernel = weight.shape[-1]
    rolled = torch.cat([conv_state[..., 1:], x[..., None].to(conv_state.dtype)], dim=-1)
    conv_state.copy_(rolled)
    window = rolled[..., width - kernel :].float()
    out = (window * weight.float()).sum(-1)
    if bias is not None:
        out = out + bias.float()
    if activation in ("silu", "swish"):
        out = F.silu(out)
    return out.to(x.dtype)
