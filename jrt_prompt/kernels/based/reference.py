"""Plain-PyTorch references of causal Based (Taylor) linear attention.

Two forms of the same math (feature map and masking rules: :mod:`jrt_prompt.kernels.taylor.reference`):
the quadratic form through the explicit score matrix, for small n, and the chunked form, which is
the algorithm of the Triton kernels (:mod:`.triton_prefill`) and runs at any n.
"""

from __future__ import annotations

import torch

from ..taylor.reference import _up, _weights, empty_state, state_from_tokens, taylor_feature_map
from ..taylor.state import LinearAttentionState

# ---------------------------------------------------------------------------------------------
# Quadratic form: explicit [n, n] score matrix. Small n only (tests, tiny models).
# ---------------------------------------------------------------------------------------------


def based_quadratic(q, k, v, *, mask=None, eps=1e-12, initial_state=None, output_final_state=False):
    """Causal Based attention through the full score matrix phi(q)·phi(k) (fp32 math)."""
    b, n, h, f = q.shape
    w = _weights(mask, b, n, q.device, _up(q[:0]).dtype)
    phi_q = taylor_feature_map(_up(q))
    phi_k = taylor_feature_map(_up(k))
    scores = torch.einsum("bnhf,bmhf->bhnm", phi_q, phi_k)
    causal = torch.ones(n, n, device=q.device, dtype=torch.bool).tril()
    scores = scores * causal * w[:, None, None, :]
    num = torch.einsum("bhnm,bmhd->bnhd", scores, _up(v))
    den = scores.sum(-1).transpose(1, 2)  # [b, n, h]
    if initial_state is not None:
        num = num + torch.einsum("bnhf,bhfd->bnhd", phi_q, initial_state.kv)
        den = den + torch.einsum("bnhf,bhf->bnh", phi_q, initial_state.ksum)
    o = num / (den[..., None] + eps) * w[:, :, None, None]
    state = None
    if output_final_state:
        state = state_from_tokens(k, v, w)
        if initial_state is not None:
            state = LinearAttentionState(state.kv + initial_state.kv, state.ksum + initial_state.ksum)
    return o.to(v.dtype), state


# Chunked form: the algorithm of the kernels. Memory O(chunk^2 + state); any n.
# ---------------------------------------------------------------------------------------------


def based_chunked(
    q, k, v, *, mask=None, eps=1e-12, initial_state=None, output_final_state=False, chunk_size=64
):
    """Causal Based attention chunk by chunk: (q·k) polynomial inside a chunk, expanded state across."""
    b, n, h, f = q.shape
    dv = v.shape[-1]
    w = _weights(mask, b, n, q.device, _up(q[:0]).dtype)
    state = (
        initial_state.clone() if initial_state is not None else empty_state(b, h, f, dv, q.device, w.dtype)
    )
    kv, ksum = state.kv, state.ksum
    out = torch.empty(b, n, h, dv, device=q.device, dtype=w.dtype)
    scale = f**-0.5
    for start in range(0, n, chunk_size):
        end = min(start + chunk_size, n)
        qc, kc, vc = _up(q[:, start:end]), _up(k[:, start:end]), _up(v[:, start:end])
        wc = w[:, start:end]
        s = torch.einsum("bnhf,bmhf->bhnm", qc, kc) * scale
        a = (1 + s + 0.5 * s * s).tril() * wc[:, None, None, :]
        phi_q = taylor_feature_map(qc)
        num = torch.einsum("bhnm,bmhd->bnhd", a, vc) + torch.einsum("bnhf,bhfd->bnhd", phi_q, kv)
        den = a.sum(-1).transpose(1, 2) + torch.einsum("bnhf,bhf->bnh", phi_q, ksum)
        out[:, start:end] = num / (den[..., None] + eps) * wc[:, :, None, None]
        phi_k = taylor_feature_map(kc) * wc[:, :, None, None]
        kv = kv + torch.einsum("bnhf,bnhd->bhfd", phi_k, vc)
        ksum = ksum + phi_k.sum(1)
    final = LinearAttentionState(kv, ksum) if output_final_state else None
    return out.to(v.dtype), final
