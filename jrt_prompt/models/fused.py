"""The element-wise parts of the JRT-RNN / Based stack as single functions, compiled on CUDA.

Each function here is plain PyTorch: on CPU (and whenever gradients are on) it runs as written;
for inference on CUDA it runs through ``torch.compile``, which fuses it into one or two kernels
(one pass over memory instead of one per operation). The matmuls stay outside, in cuBLAS.

Which stack the model runs is chosen per call by environment variables, so a benchmark can time
both in one process:

* ``JRT_STACK``: ``fast`` (default) the fused functions and the blocked sliding window;
  ``legacy`` the earlier one-op-at-a-time path with an N×N sliding-window mask (kept to measure
  against and to check the fast path).
* ``JRT_COMPILE``: ``1`` (default) compile the fused functions on CUDA for tensors of at least
  ``COMPILE_MIN_ELEMENTS`` elements (long prefills; shorter ones and decode steps run eagerly);
  ``0`` run them eagerly.
  Compiling costs seconds per function and shape family on a process's first calls (less once
  inductor's on-disk cache holds them): worth it for long prompts only, hence the size bound.
* ``JRT_SWA``: ``blocks`` (default; SDPA over windowed blocks, exact, any device) or ``flex``
  (``flex_attention`` with a sliding-window block mask).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from jrt_prompt.errors import JRTError

STACKS = ("fast", "legacy")
SWA_IMPLEMENTATIONS = ("blocks", "flex")


def _choice(name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = os.environ.get(name, default).strip().lower() or default
    if value not in allowed:
        raise JRTError(f"{name}={value!r} is not one of {list(allowed)}; unset it or pick one of those")
    return value


def stack_mode() -> str:
    """``"fast"`` or ``"legacy"`` (``JRT_STACK``)."""
    return _choice("JRT_STACK", "fast", STACKS)


def swa_implementation() -> str:
    """``"blocks"`` or ``"flex"`` (``JRT_SWA``)."""
    return _choice("JRT_SWA", "blocks", SWA_IMPLEMENTATIONS)


def compile_enabled() -> bool:
    return _choice("JRT_COMPILE", "1", ("0", "1")) == "1"


@dataclass(frozen=True)
class StackSettings:
    """The three choices above, read once per forward call (not once per layer)."""

    fast: bool = True
    compile: bool = True
    swa: str = "blocks"


LEGACY = StackSettings(fast=False, compile=False)


def stack_settings() -> StackSettings:
    return StackSettings(fast=stack_mode() == "fast", compile=compile_enabled(), swa=swa_implementation())


# --------------------------------------------------------------------------------------------
# The functions (plain PyTorch, the math of record)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x²) + eps) · weight in fp32, returned in the weight's dtype."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (normed * weight.float()).to(weight.dtype)


def add_rms_norm(residual: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float):
    """(residual + delta, rms_norm(residual + delta)); the sum is kept in the residual's dtype
    (fp32 for the released checkpoints)."""
    residual = residual + delta.to(residual.dtype)
    return residual, rms_norm(residual, weight, eps)


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """h = [value | gate] (fc1's output) -> value · SiLU(gate)."""
    value, gate = h.chunk(2, dim=-1)
    return value * F.silu(gate)


def short_conv_gate(u: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """BaseConv between its projections: u = [conv branch | gate] [b, l, 2c], weight [c, k].

    SiLU(causal depthwise conv of the conv branch) · gate, [b, l, c]; tap j multiplies the input
    k - 1 - j steps back, positions before the start are zeros; ``mask`` ([b, l] bool) zeroes
    padded inputs. Accumulates in fp32, rounds once.
    """
    c, k = weight.shape
    l = u.shape[1]
    x = u[..., :c]
    gate = u[..., c:]
    if mask is not None:
        x = x * mask[..., None].to(x.dtype)
    padded = F.pad(x, (0, 0, k - 1, 0)).float()
    w = weight.float()
    acc = padded[:, k - 1 : k - 1 + l] * w[:, k - 1]
    for j in range(k - 1):
        acc = acc + padded[:, j : j + l] * w[:, j]
    return (F.silu(acc) * gate.float()).to(u.dtype)


def short_conv_gate_step(u: torch.Tensor, state: torch.Tensor, weight: torch.Tensor):
    """One decode step of :func:`short_conv_gate`: u [b, 2c], state [b, c, k - 1] (the last conv
    inputs, oldest first) -> (gated [b, c], the new state)."""
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


# --------------------------------------------------------------------------------------------
# Compilation on CUDA

_COMPILED: dict = {}
_BROKEN: set = set()


# Below this many elements a fused function runs eagerly even on CUDA. Measured on an H200
# (JRT-RNN-1.3B, batch 1, docs/benchmarks.md): at 2k tokens (3.7M elements a hidden state) the eager
# stack was faster (34.0 vs 38.7 ms), at 8k the compiled one (52.6 vs 82.3 ms); one-token decode
# steps run inside CUDA graphs, where fusing saves little, while compiling them again for every
# batch size cost tens of seconds.
COMPILE_MIN_ELEMENTS = 4 * 1024 * 1024


def _compiles_on(t: torch.Tensor) -> bool:
    return t.device.type == "cuda" and t.numel() >= COMPILE_MIN_ELEMENTS


def _norm_kernel_applies(x: torch.Tensor, delta: torch.Tensor | None, compile: bool) -> bool:
    """Rows too small to compile (decode steps, short prompts) on the Triton backend go through
    the one-kernel op of :mod:`jrt_prompt.kernels.norm` instead of about eight eager kernels: the
    same math as :func:`rms_norm` / :func:`add_rms_norm` (fp32 norm, fp32 product with the weight,
    one rounding), and a CUDA graph of a decode step holds one node where it held eight."""
    from jrt_prompt.kernels.dispatch import backend_for

    if torch.is_grad_enabled() or (compile and _compiles_on(x)) or backend_for(x) != "triton":
        return False
    return delta is None or delta.dtype == x.dtype or x.dtype == torch.float32


def norm_rows(
    x: torch.Tensor, weight: torch.Tensor, eps: float, delta: torch.Tensor | None = None, *, compile: bool = True
):
    """``rms_norm(x)`` (``delta`` None) or ``add_rms_norm(x, delta)``, through the Triton op for
    small inputs on the Triton backend, else through :func:`run`."""
    if not _norm_kernel_applies(x, delta, compile):
        if delta is None:
            return run(rms_norm, x, weight, eps, compile=compile)
        return run(add_rms_norm, x, delta, weight, eps, compile=compile)
    from jrt_prompt.kernels.norm import residual_rms_norm

    d = x.shape[-1]
    rows = x.reshape(-1, d)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    extra = None if delta is None else delta.reshape(-1, d).contiguous()
    summed, normed = residual_rms_norm(
        rows, weight, eps, extra, residual_dtype=x.dtype, norm_dtype=torch.float32, out_dtype=weight.dtype
    )
    normed = normed.view(x.shape)
    return normed if delta is None else (summed.view(x.shape), normed)


def compile_failures() -> list[str]:
    """Names of the fused functions whose compilation failed (they run eagerly since)."""
    return sorted(fn.__name__ for fn in _BROKEN)


def run(fn, *args, compile: bool = True):
    """``fn(*args)``, through ``torch.compile`` for CUDA inference when ``compile`` (see the
    module docstring); eagerly on other devices, with gradients on, or inside a compiled model.

    If compiling fails (an old Triton, a missing compiler), the function runs eagerly from then on
    and one warning says why.
    """
    if (
        not compile
        or not _compiles_on(args[0])
        or torch.is_grad_enabled()
        or fn in _BROKEN
        or torch.compiler.is_compiling()
    ):
        return fn(*args)
    compiled = _COMPILED.get(fn)
    if compiled is None:
        compiled = _COMPILED[fn] = torch.compile(fn, fullgraph=True)
    try:
        return compiled(*args)
    except Exception as error:  # noqa: BLE001 - a compiler failure must not stop inference
        _BROKEN.add(fn)
        warnings.warn(
            f"torch.compile of {fn.__name__} failed ({type(error).__name__}: "
            f"{(str(error).splitlines() or [''])[0][:200]}); "
            "running it eagerly (set JRT_COMPILE=0 to skip compiling)",
            stacklevel=2,
        )
        return fn(*args)
