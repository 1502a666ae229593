"""The chunked SSD through fla's ``chunk_simple_gla`` (flash-linear-attention, an optional GPU dependency).

Mamba-2's SSD is simple GLA with a scalar decay per head and step: queries C, keys B (one group
shared by several heads), values dt * x, log decay g = dt * A, no score scale. fla keeps the
state as [b, h, v, k] with ``state_v_first=True``, which is Mamba-2's [b, h, p, n]. fla takes one
key and query per head, so B and C are broadcast to the heads of their group here (fla's own
input guard makes them contiguous). The D skip and the z gate are added after the call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from jrt_prompt.errors import JRTError

from .reference import process_dt


def _chunk_simple_gla():
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except ImportError as exc:  # fla is optional: the GPU extra
        raise JRTError(
            f"implementation='fla' needs flash-linear-attention ({exc}); "
            "install it with `pip install flash-linear-attention` or use implementation='triton'"
        ) from None
    return chunk_simple_gla


def _per_head(t: torch.Tensor, h: int) -> torch.Tensor:
    b, l, g, n = t.shape
    return t[:, :, :, None, :].expand(b, l, g, h // g, n).reshape(b, l, h, n)


def ssd_chunk_scan(
    x: torch.Tensor,
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
):
    """Same arguments and results as :func:`.reference.ssd_chunk_scan`; fla picks its own chunk length."""
    chunk_simple_gla = _chunk_simple_gla()
    h = x.shape[2]
    dt = process_dt(dt, dt_bias, dt_softplus, dt_limit)  # [b, l, h] fp32
    v = (x.float() * dt[..., None]).to(x.dtype)
    g = dt * A.float()  # log decay per step, fp32
    init = initial_states.float().contiguous() if initial_states is not None else None
    out, final = chunk_simple_gla(
        q=_per_head(C, h),
        k=_per_head(B, h),
        v=v,
        g=g,
        scale=1.0,
        initial_state=init,
        output_final_state=return_final_states,
        state_v_first=True,
    )
    if D is not None or z is not None:
        y = out.float()
        if D is not None:
            Df = D.float()
            y = y + x.float() * (Df[:, None] if Df.dim() == 1 else Df)
        if z is not None:
            y = y * F.silu(z.float())
        out = y.to(x.dtype)
    else:
        out = out.to(x.dtype)
    if return_final_states:
        return out, final.float()
    return out
