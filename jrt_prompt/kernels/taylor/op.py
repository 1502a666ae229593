"""The public decode step, and the input checks every Taylor op shares.

:func:`linear_attention_step` continues any state that :func:`~jrt_prompt.kernels.based_linear_attention`
or :func:`~jrt_prompt.kernels.prefix_linear_attention` returned. Which implementation runs is
decided in :mod:`jrt_prompt.kernels.dispatch` (``JRT_KERNELS``).
"""

from __future__ import annotations

import torch

from jrt_prompt.errors import JRTError

from ..dispatch import backend_for
from . import reference
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
        from . import triton_step

        return triton_step.decode_step(q, k, v, state, eps=eps)
    return reference.step_reference(q, k, v, state, eps=eps)
