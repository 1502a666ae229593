"""Plain-PyTorch math of the JRT-RNN / Based stack's small element-wise ops (the math of record:
the stack compiles these same functions for long prompts, and the Triton kernels beside them
compute them for decode steps and short prompts)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """h = [value | gate] (fc1's output) -> value · SiLU(gate)."""
    value, gate = h.chunk(2, dim=-1)
    return value * F.silu(gate)


def short_conv_gate_step(u: torch.Tensor, state: torch.Tensor, weight: torch.Tensor):
    """One decode step of BaseConv's gated short conv: u [b, 2c] = [conv branch | gate], state
    [b, c, k - 1] (the last conv inputs, oldest first), weight [c, k] -> (gated [b, c], the new
    state). Accumulates in fp32, rounds once."""
    c = weight.shape[0]
    x = u[..., :c]
    window = torch.cat([state, x[..., None].to(state.dtype)], dim=-1)  # [b, c, k]
    acc = (window.float() * weight.float()).sum(-1)
    return (F.silu(acc) * u[..., c:].float()).to(u.dtype), window[..., 1:]


def rotary_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """qkv [b, l, 3, h, hd] -> rotated q, rotated k, v (each [b, l, h, hd]).

    cos, sin [b, l, 1, half] fp32: channel i < half pairs with i + half (GPT-NeoX layout); the
    channels from 2·half on are left as they are. Rotation in fp32, rounded once.
    """
    half = cos.shape[-1]
    q, k, v = qkv.unbind(2)

    def rotate(x):
        x1 = x[..., :half].float()
        x2 = x[..., half : 2 * half].float()
        rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
        return torch.cat([rotated, x[..., 2 * half :]], dim=-1)

    return rotate(q), rotate(k), v
