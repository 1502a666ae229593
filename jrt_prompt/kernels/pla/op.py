"""The public PLA op: check the inputs, then run the Triton kernels or the reference.

Which one runs is decided in :mod:`jrt_prompt.kernels.dispatch` (``JRT_KERNELS``).
"""

from __future__ import annotations

import torch

from jrt_prompt.errors import JRTError

from ..dispatch import backend_for
from ..taylor.op import _QUADRATIC_MAX_LEN, _check_mask, _check_qkv
from ..taylor.state import LinearAttentionState
from . import reference


def _enc_lengths(enc_lengths, b: int, n: int, device) -> torch.Tensor:
    if isinstance(enc_lengths, bool):
        raise JRTError("enc_lengths must be an int or a LongTensor[batch], not a bool")
    if isinstance(enc_lengths, int):
        if enc_lengths < 0:
            raise JRTError("enc_lengths must be >= 0")
        lengths = torch.full((b,), enc_lengths, dtype=torch.long, device=device)
    elif isinstance(enc_lengths, torch.Tensor):
        if enc_lengths.dim() == 0:
            lengths = enc_lengths.reshape(1).expand(b)
        elif enc_lengths.shape != (b,):
            raise JRTError(
                f"enc_lengths must have one entry per batch row ({b}); got {tuple(enc_lengths.shape)}"
            )
        else:
            lengths = enc_lengths
        if lengths.dtype.is_floating_point:
            raise JRTError("enc_lengths must be integers (a LongTensor), not floats")
        # Checking a CUDA tensor's values would wait for the GPU at every layer: only CPU tensors are
        # checked; on the GPU a negative length reads as 0 (no encoder).
        if not enc_lengths.is_cuda and bool((enc_lengths < 0).any()):
            raise JRTError("enc_lengths must be >= 0")
        lengths = lengths.to(device=device, dtype=torch.long)
    else:
        raise JRTError(f"enc_lengths must be an int or a LongTensor[batch]; got {type(enc_lengths).__name__}")
    return lengths.clamp(min=0, max=n).contiguous()


def prefix_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_enc: torch.Tensor,
    v_enc: torch.Tensor,
    *,
    enc_lengths,
    mask: torch.Tensor | None = None,
    eps: float = 1e-12,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, LinearAttentionState | None]:
    """Prefix linear attention (JRT-RNN): causal Based term plus a non-causal encoder term.

    Encoder positions are ``m < enc_lengths[b]`` (per batch row); their keys/values come from
    ``k_enc``/``v_enc``. Both terms share one normaliser. The returned state holds both sums, so
    decoding continues with :func:`linear_attention_step`.
    """
    _check_qkv(q, k, v)
    _check_qkv(q, k_enc, v_enc, what="q/k_enc/v_enc")
    if v_enc.shape != v.shape:
        raise JRTError(f"v_enc must have v's shape {tuple(v.shape)}; got {tuple(v_enc.shape)}")
    b, n, h, f = q.shape
    mask = _check_mask(mask, b, n, q.device)
    lengths = _enc_lengths(enc_lengths, b, n, q.device)
    if backend_for(q) == "triton":
        from . import triton_prefill

        return triton_prefill.pla_prefill(
            q,
            k,
            v,
            k_enc,
            v_enc,
            enc_lengths=lengths,
            mask=mask,
            eps=eps,
            output_final_state=output_final_state,
        )
    fn = reference.pla_quadratic if n <= _QUADRATIC_MAX_LEN else reference.pla_chunked
    return fn(
        q, k, v, k_enc, v_enc, enc_lengths=lengths, mask=mask, eps=eps, output_final_state=output_final_state
    )
