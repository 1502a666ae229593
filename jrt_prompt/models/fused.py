"""The element-wise parts of the JRT-RNN / Based stack as single functions, compiled on CUDA.

Each function here is plain PyTorch (SwiGLU, the conv-gate step and rotary are imported from
:mod:`jrt_prompt.kernels.stack.reference`, beside their Triton kernels): on CPU (and whenever
gradients are on) it runs as written; for inference on CUDA it runs through ``torch.compile`` on
large inputs, which fuses it into one or two kernels (one pass over memory instead of one per
operation), and through a hand-written one-launch Triton op (:mod:`jrt_prompt.kernels.norm`,
:mod:`jrt_prompt.kernels.stack`) on small ones, where compiling would cost seconds for every new
batch size. The matmuls stay outside, in cuBLAS.

Which stack the model runs is chosen per call by environment variables, so a benchmark can time
both in one process:

* ``JRT_STACK``: ``fast`` (default) the fused functions and the blocked sliding window;
  ``legacy`` the earlier one-op-at-a-time path with an N×N sliding-window mask (kept to measure
  against and to check the fast path).
* ``JRT_COMPILE``: ``1`` (default) compile the fused functions on CUDA for tensors of at least
  ``COMPILE_MIN_ELEMENTS`` elements (long prefills; shorter ones and decode steps run through
  the Triton ops); ``0`` compile nothing (the Triton ops serve every size).
  Compiling costs seconds per function and shape family on a process's first calls (less once
  inductor's on-disk cache holds them): worth it for long prompts only, hence the size bound.
  Batch size and length are compiled as dynamic from the first call, so a function compiles
  twice in a process (batch 1, and every other batch), whatever the prompts' shapes.
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
from jrt_prompt.kernels import stack
from jrt_prompt.kernels.dispatch import backend_for
from jrt_prompt.kernels.norm import residual_rms_norm
from jrt_prompt.kernels.stack.reference import rotary_qkv, short_conv_gate_step, swiglu

__all__ = [
    "add_rms_norm",
    "rms_norm",
    "rotary_qkv",
    "run",
    "short_conv_gate",
    "short_conv_gate_step",
    "swiglu",
]

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


# --------------------------------------------------------------------------------------------
# Compilation on CUDA

_COMPILED: dict = {}
_BROKEN: set = set()


# Below this many elements a fused function is not compiled. Measured on an H200 (JRT-RNN-1.3B,
# batch 1, docs/benchmarks.md): at 2k tokens (3.7M elements a hidden state) the eager stack was
# faster (34.0 vs 38.7 ms), at 8k the compiled one (52.6 vs 82.3 ms); compiling one-token decode
# steps again for every batch size cost tens of seconds. Fusing still pays for decode steps
# (464 tokens/s compiled against 242 eager at batch 1), so small inputs take the Triton ops.
COMPILE_MIN_ELEMENTS = 4 * 1024 * 1024


def _compiles_on(t: torch.Tensor) -> bool:
    return t.device.type == "cuda" and t.numel() >= COMPILE_MIN_ELEMENTS


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _norm_kernel(x, weight, eps):
    _, normed = residual_rms_norm(
        _as_rows(x), weight, eps, residual_dtype=x.dtype, norm_dtype=torch.float32, out_dtype=weight.dtype
    )
    return normed.view(x.shape)


def _add_norm_kernel(residual, delta, weight, eps):
    summed, normed = residual_rms_norm(
        _as_rows(residual),
        weight,
        eps,
        _as_rows(delta),
        residual_dtype=residual.dtype,
        norm_dtype=torch.float32,
        out_dtype=weight.dtype,
    )
    return summed.view(residual.shape), normed.view(residual.shape)


# The one-launch Triton op computing each function (the same math; see kernels/norm, kernels/stack).
_KERNELS = {
    rms_norm: _norm_kernel,
    swiglu: stack.swiglu,
    short_conv_gate_step: stack.short_conv_gate_step,
    rotary_qkv: stack.rotary_qkv,
}


def _kernel_for(fn, args):
    """The Triton op for ``fn(*args)``, or None where there is none or it does not apply."""
    if fn is add_rms_norm:
        residual, delta = args[0], args[1]
        # the kernel adds in fp32 and rounds once: the same as here when the residual is fp32 or
        # both are of one dtype
        return _add_norm_kernel if delta.dtype == residual.dtype or residual.dtype == torch.float32 else None
    return _KERNELS.get(fn)


def _mark_token_dims_dynamic(args) -> None:
    """Compile for any batch size and length from the first call. Left to itself, torch.compile
    compiles the first shape as it is, again when the length changes, again when the batch size
    does, and once more for batch 1: four compilations a function over a run of mixed prompts
    (`jrt eval`), where two serve (a dynamic size of 1 is specialised, so batch 1 keeps its own).

    Every function here takes its activation first, [batch, length, ...] ([batch, width] for a
    decode step): those leading dimensions are marked, and the same dimensions of the other
    inputs where they have the same sizes (a mask, the rotary tables). The model's widths stay
    static, as kernels are best specialised for them; one-dimensional inputs are weights."""
    first = args[0]
    leading = range(2 if first.dim() >= 3 else 1)
    for a in args:
        if isinstance(a, torch.Tensor) and a.dim() >= 2:
            for dim in leading:
                if dim < a.dim() and a.shape[dim] == first.shape[dim]:
                    torch._dynamo.maybe_mark_dynamic(a, dim)


def compile_failures() -> list[str]:
    """Names of the fused functions whose compilation failed (they run eagerly since)."""
    return sorted(fn.__name__ for fn in _BROKEN)


def run(fn, *args, compile: bool = True):
    """``fn(*args)``, through ``torch.compile`` for CUDA inference when ``compile`` and the input
    is large (see the module docstring); below that size through the function's one-launch
    Triton op on the Triton backend; eagerly on other devices, with gradients on, or inside a
    compiled model.

    If compiling fails (an old Triton, a missing compiler), the function runs eagerly from then on
    and one warning says why.
    """
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return fn(*args)
    if not (compile and _compiles_on(args[0])) or fn in _BROKEN:
        # Too small to compile (decode steps, short prompts): one Triton launch where the PyTorch
        # math takes several, on the Triton backend (CUDA, or JRT_KERNELS=triton)
        kernel = _kernel_for(fn, args) if backend_for(args[0]) == "triton" else None
        return kernel(*args) if kernel is not None else fn(*args)
    compiled = _COMPILED.get(fn)
    if compiled is None:
        compiled = _COMPILED[fn] = torch.compile(fn, fullgraph=True)
    _mark_token_dims_dynamic(args)
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
