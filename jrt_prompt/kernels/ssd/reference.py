"""Plain-PyTorch Mamba-2 SSD (state space duality): the chunked scan and the one-token step.

The recurrence, per batch row b, head h, position t (p: head dim, n: state size)::

    dt_t  = clamp(softplus(dt_t + dt_bias))            # softplus only with dt_softplus
    S_t   = exp(dt_t * A) * S_{t-1} + dt_t * x_t B_t^T  # S: [p, n], fp32
    y_t   = S_t C_t + D * x_t   (times silu(z_t) when a gate z is given)

B and C belong to a group of heads: head h reads group h // (heads / groups).

The chunked form (what the Triton kernels compute) cuts the sequence into chunks of `chunk_size`
tokens. Inside a chunk, with the cumulative log decay a_i = sum_{j <= i} dt_j A::

    y_i = sum_{j <= i} (C_i . B_j) exp(a_i - a_j) dt_j x_j   +   exp(a_i) C_i S_in
    S_out = exp(a_last) S_in + sum_j exp(a_last - a_j) dt_j x_j B_j^T

Everything here runs in float32 whatever the input dtype; outputs take the input dtype, states
stay float32 (as mamba-ssm's kernels return them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def process_dt(dt: torch.Tensor, dt_bias, dt_softplus: bool, dt_limit) -> torch.Tensor:
    """dt + dt_bias, softplus (threshold 20, as torch's), clamped to dt_limit; float32."""
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    return dt.clamp(min=dt_limit[0], max=dt_limit[1])


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
    """Chunked SSD over x [b, l, h, p] with dt [b, l, h], A [h], B/C [b, l, g, n].

    D: [h] (or [h, p]) skip; z: [b, l, h, p] gate; initial_states: [b, h, p, n].
    Returns y [b, l, h, p] in x's dtype, and the final state [b, h, p, n] float32 when
    return_final_states.
    """
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    hg = h // g  # heads per group
    dt = process_dt(dt, dt_bias, dt_softplus, dt_limit)  # [b, l, h]
    # heads split as (group, head in group) so that B and C are used per group, never copied per head
    xs = x.float().reshape(b, l, g, hg, p)
    dts = dt.reshape(b, l, g, hg)
    log_a = dts * A.float().reshape(g, hg)  # dt * A, the log decay of each step
    Bf, Cf = B.float(), C.float()

    if initial_states is None:
        state = x.new_zeros((b, g, hg, p, n), dtype=torch.float32)
    else:
        state = initial_states.float().reshape(b, g, hg, p, n).clone()
    out = torch.empty((b, l, g, hg, p), dtype=torch.float32, device=x.device)

    for start in range(0, l, chunk_size):
        end = min(start + chunk_size, l)
        xc, dtc, Bc, Cc = xs[:, start:end], dts[:, start:end], Bf[:, start:end], Cf[:, start:end]
        cum = torch.cumsum(log_a[:, start:end], dim=1)  # [b, t, g, hg]: a_i
        t = end - start
        # decay from j to i (i >= j): exp(a_i - a_j); the upper triangle is masked before exp
        diff = cum[:, :, None] - cum[:, None, :]  # [b, i, j, g, hg]
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()[None, :, :, None, None]
        decay = torch.exp(diff.masked_fill(~causal, float("-inf")))
        scores = torch.einsum("bign,bjgn->bijg", Cc, Bc)  # C_i . B_j, once per group
        weights = scores[..., None] * decay * dtc[:, None]  # [b, i, j, g, hg]
        y_intra = torch.einsum("bijgh,bjghp->bighp", weights, xc)
        y_state = torch.einsum("bign,bghpn->bighp", Cc, state) * torch.exp(cum)[..., None]
        out[:, start:end] = y_intra + y_state
        # carry: S_out = exp(a_last) S_in + sum_j exp(a_last - a_j) dt_j x_j B_j^T
        to_end = torch.exp(cum[:, -1:] - cum) * dtc  # [b, t, g, hg]
        state = state * torch.exp(cum[:, -1])[..., None, None] + torch.einsum(
            "bjgh,bjghp,bjgn->bghpn", to_end, xc, Bc
        )

    out = out.reshape(b, l, h, p)
    if D is not None:
        Df = D.float()
        out = out + x.float() * (Df[:, None] if Df.dim() == 1 else Df)
    if z is not None:
        out = out * F.silu(z.float())
    out = out.to(x.dtype)
    if return_final_states:
        return out, state.reshape(b, h, p, n)
    return out


def ssd_state_update(
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
    """One token: state [b, h, p, n] updated in place; returns y [b, h, p] in x's dtype.

    x, dt, z: [b, h, p]; A: [h, p, n]; B, C: [b, g, n]; D, dt_bias: [h, p] (stride-0 views welcome).
    """
    b, h, p = x.shape
    g, n = B.shape[1], B.shape[2]
    hg = h // g
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    # groups as views [b, g, 1, n] against heads split [b, g, hg, ...]
    Bg = B.float()[:, :, None, None, :]  # [b, g, 1, 1, n]
    Cg = C.float()[:, :, None, None, :]
    dts = dt.reshape(b, g, hg, p)[..., None]  # [b, g, hg, p, 1]
    xs = x.float().reshape(b, g, hg, p)[..., None]
    s = state.float().reshape(b, g, hg, p, n)
    s = s * torch.exp(dts * A.float().reshape(g, hg, p, n)) + dts * xs * Bg
    state.copy_(s.reshape(b, h, p, n).to(state.dtype))
    y = (s * Cg).sum(-1).reshape(b, h, p)
    if D is not None:
        y = y + x.float() * D.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype)
