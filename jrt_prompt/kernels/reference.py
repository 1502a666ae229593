"""Plain-PyTorch references for Based linear attention and prefix linear attention (PLA).

These are the readable statements of the math the Triton kernels compute, and the CPU path of
the model code. Layout everywhere is ``[batch, seq, heads, dim]``.

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


def _enc_weights(enc_lengths: torch.Tensor, b: int, n: int, device, dtype=torch.float32) -> torch.Tensor:
    """[b, n] fp32 weight that is 1 on encoder positions ``m < enc_lengths[b]``."""
    pos = torch.arange(n, device=device)
    return (pos[None, :] < enc_lengths.to(device)[:, None]).to(dtype)


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


def pla_quadratic(q, k, v, k_enc, v_enc, *, enc_lengths, mask=None, eps=1e-12, output_final_state=False):
    """Prefix linear attention written term by term (causal part + non-causal encoder part)."""
    b, n, h, f = q.shape
    w = _weights(mask, b, n, q.device, _up(q[:0]).dtype)
    w_enc = _enc_weights(enc_lengths, b, n, q.device, w.dtype) * w
    phi_q = taylor_feature_map(_up(q))
    phi_k = taylor_feature_map(_up(k))
    phi_ke = taylor_feature_map(_up(k_enc))
    causal = torch.ones(n, n, device=q.device, dtype=torch.bool).tril()
    a_causal = torch.einsum("bnhf,bmhf->bhnm", phi_q, phi_k) * causal * w[:, None, None, :]
    a_enc = torch.einsum("bnhf,bmhf->bhnm", phi_q, phi_ke) * w_enc[:, None, None, :]
    num = torch.einsum("bhnm,bmhd->bnhd", a_causal, _up(v)) + torch.einsum(
        "bhnm,bmhd->bnhd", a_enc, _up(v_enc)
    )
    den = (a_causal.sum(-1) + a_enc.sum(-1)).transpose(1, 2)
    o = num / (den[..., None] + eps) * w[:, :, None, None]
    state = None
    if output_final_state:
        s1 = state_from_tokens(k, v, w)
        s2 = state_from_tokens(k_enc, v_enc, w_enc)
        state = LinearAttentionState(s1.kv + s2.kv, s1.ksum + s2.ksum)
    return o.to(v.dtype), state


# ---------------------------------------------------------------------------------------------
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


def pla_chunked(
    q, k, v, k_enc, v_enc, *, enc_lengths, mask=None, eps=1e-12, output_final_state=False, chunk_size=64
):
    """PLA as the kernels do it: reduce the encoder into a state, then causal Based from that state."""
    b, n, _, _ = q.shape
    w = _weights(mask, b, n, q.device, _up(q[:0]).dtype)
    w_enc = _enc_weights(enc_lengths, b, n, q.device, w.dtype) * w
    enc_state = state_from_tokens(k_enc, v_enc, w_enc)
    return based_chunked(
        q,
        k,
        v,
        mask=mask,
        eps=eps,
        initial_state=enc_state,
        output_final_state=output_final_state,
        chunk_size=chunk_size,
    )


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
