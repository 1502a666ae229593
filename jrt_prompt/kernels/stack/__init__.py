"""The JRT-RNN / Based stack's small element-wise ops: SwiGLU, BaseConv's one-token gated conv,
and the rotary embedding of q and k. Which implementation runs is decided by
:func:`jrt_prompt.kernels.dispatch.backend_for` (Triton on CUDA, the PyTorch reference on CPU,
``JRT_KERNELS`` overrides); :mod:`jrt_prompt.models.fused` routes the stack's small calls (decode
steps, short prompts) here and compiles the references for long prompts.
"""

from __future__ import annotations

import torch

from ..dispatch import backend_for
from . import reference

__all__ = ["rotary_qkv", "short_conv_gate_step", "swiglu"]


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """h = [value | gate] -> value · SiLU(gate), in h's dtype."""
    if backend_for(h) == "triton":
        from . import triton as kernels

        return kernels.swiglu(h)
    return reference.swiglu(h)


def short_conv_gate_step(u: torch.Tensor, state: torch.Tensor, weight: torch.Tensor):
    """(gated [b, c], the new state [b, c, k - 1]); the Triton kernel writes the new state into
    ``state`` and returns ``state`` itself, the reference returns a new tensor."""
    if backend_for(u) == "triton":
        from . import triton as kernels

        return kernels.short_conv_gate_step(u, state, weight)
    return reference.short_conv_gate_step(u, state, weight)


def rotary_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """qkv [b, l, 3, h, hd], cos / sin [b, l, 1, half] -> (q, k, v), q and k rotated."""
    if backend_for(qkv) == "triton":
        from . import triton as kernels

        return kernels.rotary_qkv(qkv, cos, sin)
    return reference.rotary_qkv(qkv, cos, sin)
