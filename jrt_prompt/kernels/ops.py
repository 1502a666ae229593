"""The public linear-attention ops: check the inputs, then run the Triton kernel or the reference.

Which one runs is decided in :mod:`jrt_prompt.kernels.dispatch` (``JRT_KERNELS``).
"""

from __future__ import annotations

import torch

from jrt_prompt.errors import JRTError

from . import reference
from .dispatch import backend_for
from .state import LinearAttentionState

# Below this length the quadratic reference is cheaper on CPU than the chunked loop.
_QUADRATIC_MAX_LEN = 128


def _check_qkv(q, k, v, what: str = "q/k/v"):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise JRTError(
            f"{what} must be 4-D [batch, seq, heads, dim]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape != k.shape:
        raise JRTError(f"q and k must have the same shape; got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise JRTError(
            f"v must match q in batch, seq and heads; got v {tuple(v.shape)} for q {tuple(q.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise JRTError(f"q, k, v must share one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise JRTError(f"q/k/v dtype {q.dtype} is not supported; use float32, float16 or bfloat16")
    if not (q.device == k.device == v.device):
        raise JRTError("q, k, v must be on one device")


def _check_mask(mask, b: int, n: int, device):
    if mask is None:
        return None
    if mask.shape != (b, n):
        raise JRTError(f"mask must be [batch, seq] = {(b, n)}; got {tuple(mask.shape)}")
    return mask.to(device=device, dtype=torch.bool)


def _check_state(state: LinearAttentionState, b: int, h: int, f: int, dv: int, device):
    feats = 1 + f + f * f
    if not isinstance(state, LinearAttentionState):
        raise JRTError("state must be a LinearAttentionState(kv, ksum)")
    if tuple(state.kv.shape) != (b, h, feats, dv) or tuple(state.ksum.shape) != (b, h, feats):
        raise JRTError(
            f"state shapes kv {tuple(state.kv.shape)}, ksum {tuple(state.ksum.shape)} do not match "
            f"[batch, heads, F, dv] = {(b, h, feats, dv)} for feature dim {f}"
        )
    # float64 states are accepted for reference (CPU) checks only; the kernels take float32.
    if state.kv.dtype not in (torch.float32, torch.float64) or state.ksum.dtype != state.kv.dtype:
        raise JRTError("state tensors must be float32 (kv and ksum)")
    if state.kv.device != device or state.ksum.device != device:
        raise JRTError(f"state is on {state.kv.device}, inputs on {device}; move one of them")


def _enc_lengths(enc_lengths, b: int, n: int, device) -> torch.Tensor:
    if isinstance(enc_lengths, bool):
        raise JRTError("enc_lengths must be an int or a LongTensor[batch], not a bool")
    if isinstance(enc_lengths, int):
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
        lengths = lengths.to(device=device, dtype=torch.long)
    else:
        raise JRTError(f"enc_lengths must be an int or a LongTensor[batch]; got {type(enc_lengths).__name__}")
    if bool((lengths < 0).any()):
        raise JRTError("enc_lengths must be >= 0")
    return lengths.clamp(max=n).contiguous()


def based_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    eps: float = 1e-12,
    initial_state: LinearAttentionState | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, LinearAttentionState | None]:
    """Causal Based (Taylor) linear attention over [b, l, h, f] queries/keys and [b, l, h, dv] values.

    Returns the output in v's dtype and, if asked, the fp32 state after the last token.
    """
    _check_qkv(q, k, v)
    b, n, h, f = q.shape
    mask = _check_mask(mask, b, n, q.device)
    if initial_state is not None:
        _check_state(initial_state, b, h, f, v.shape[-1], q.device)
    if backend_for(q) == "triton":
        from . import triton_ops

        return triton_ops.based_prefill(
            q, k, v, mask=mask, eps=eps, initial_state=initial_state, output_final_state=output_final_state
        )
    fn = reference.based_quadratic if n <= _QUADRATIC_MAX_LEN else reference.based_chunked
    return fn(q, k, v, mask=mask, eps=eps, initial_state=initial_state, output_final_state=output_final_state)


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
        from . import triton_ops

        return triton_ops.pla_prefill(
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


def linear_attention_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LinearAttentionState, *, eps: float = 1e-12
) -> torch.Tensor:
    """One decode step for [b, h, f] q/k and [b, h, dv] v; updates ``state`` in place, returns [b, h, dv].

    The CUDA kernel reads each pair of quadratic rows (i, j), (j, i) of ``state.kv`` once: they are
    equal in every state built by these ops or by sums of phi(k) ⊗ v (the Taylor map is
    symmetric); for a hand-made state whose quadratic block is not, row (i, j) wins (i < j).
    """
    if q.dim() != 3 or q.shape != k.shape or v.dim() != 3 or v.shape[:2] != q.shape[:2]:
        raise JRTError(
            f"step inputs must be q, k [batch, heads, f] and v [batch, heads, dv]; got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    b, h, f = q.shape
    _check_state(state, b, h, f, v.shape[-1], q.device)
    if backend_for(q) == "triton":
        from . import triton_ops

        return triton_ops.decode_step(q, k, v, state, eps=eps)
    return reference.step_reference(q, k, v, state, eps=eps)
