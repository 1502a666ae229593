"""Plain-PyTorch references of prefix linear attention (PLA, the JRT-RNN mixer).

The quadratic form writes the causal Based term and the non-causal encoder term out one by one;
the chunked form is the kernels' algorithm: reduce the encoder into a state, then run causal
Based from that state (feature map and masking rules: :mod:`jrt_prompt.kernels.taylor.reference`).
"""

from __future__ import annotations

import torch

from ..based.reference import based_chunked
from ..taylor.reference import _up, _weights, state_from_tokens, taylor_feature_map
from ..taylor.state import LinearAttentionState


def _enc_weights(enc_lengths: torch.Tensor, b: int, n: int, device, dtype=torch.float32) -> torch.Tensor:
    """[b, n] fp32 weight that is 1 on encoder positions ``m < enc_lengths[b]``."""
    pos = torch.arange(n, device=device)
    return (pos[None, :] < enc_lengths.to(device)[:, None]).to(dtype)


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
