"""``accelerate(model)``: this project's kernels inside transformers' Mamba, Mamba-2 and Falcon-Mamba.

transformers' mixers call module-level functions for their heavy parts (``causal_conv1d_fn``,
``causal_conv1d_update``, ``mamba_selective_scan``, ``mamba_selective_state_update`` in
``modeling_mamba`` and ``modeling_falcon_mamba``; ``mamba2_chunk_scan`` and
``mamba2_selective_state_update`` in ``modeling_mamba2``). Each resolves, at import time, to
mamba-ssm / causal-conv1d when they are installed and to a slow PyTorch path otherwise. The
modeling code and the checkpoints stay transformers' own: ``accelerate`` replaces only those module
functions, with a dispatcher that sends a call to this project's kernel when

- ``JRT_KERNELS=triton`` or ``JRT_KERNELS=reference`` forces this project's ops (Triton, or their
  PyTorch references), on any device; or
- the tensors are on a CUDA device and the package that transformers would use for that function
  (mamba-ssm or causal-conv1d) is not installed — when it is, transformers' fast path stays;

and to transformers' original function otherwise. The functions are module globals, so the patch
is process-wide (every model of those classes sees it); :func:`restore` puts the originals back.
Patching is idempotent.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

import torch

from ..kernels import mamba as mamba_ops
from ..kernels.dispatch import kernel_choice

# module -> {function name: transformers' original function}, for every module patched now
_ORIGINALS: dict[str, dict[str, Callable]] = {}


@functools.cache
def _installed(package: str) -> bool:
    # cached: the dispatchers ask on every call, and a module search touches the file system
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def _ours(tensor: torch.Tensor, package: str) -> bool:
    choice = kernel_choice()
    if choice != "auto":
        return True
    return tensor.is_cuda and not _installed(package)


# --- replacements with transformers' signatures ----------------------------------------------


def _conv1d_fn(original):
    def causal_conv1d_fn(hidden_states, weight, bias=None, activation=None, **kwargs):
        if not _ours(hidden_states, "causal_conv1d") or kwargs.get("seq_idx") is not None:
            return original(hidden_states, weight, bias=bias, activation=activation, **kwargs)
        return mamba_ops.causal_conv1d(hidden_states, weight, bias, activation)

    return causal_conv1d_fn


def _conv1d_update(original):
    def causal_conv1d_update(hidden_states, conv_state, weight, bias=None, activation=None, **kwargs):
        if not _ours(hidden_states, "causal_conv1d") or hidden_states.shape[-1] != 1:
            return original(hidden_states, conv_state, weight, bias=bias, activation=activation, **kwargs)
        out = mamba_ops.causal_conv1d_update(hidden_states[..., 0], conv_state, weight, bias, activation)
        return out[..., None]

    return causal_conv1d_update


def _selective_scan(original):
    def mamba_selective_scan(
        hidden_states, dt, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
        return_last_state=False, **kwargs,
    ):
        if not _ours(hidden_states, "mamba_ssm") or B.dim() != 3:
            return original(
                hidden_states, dt, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                return_last_state=return_last_state, **kwargs,
            )
        return mamba_ops.selective_scan(
            hidden_states, dt, A, B, C, D, z, delta_bias, delta_softplus, None, return_last_state
        )

    return mamba_selective_scan


def _selective_state_update(original):
    def mamba_selective_state_update(
        state, hidden_states, dt, A, B, C, D=None, dt_bias=None, dt_softplus=False, z=None, **kwargs
    ):
        if not _ours(hidden_states, "mamba_ssm") or hidden_states.dim() != 2:
            return original(
                state, hidden_states, dt, A, B, C, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus, z=z, **kwargs
            )
        return mamba_ops.selective_state_update(state, hidden_states, dt, A, B, C, D, z, dt_bias, dt_softplus)

    return mamba_selective_state_update


def _ssd_chunk_scan(original):
    def mamba2_chunk_scan(hidden_states, dt, A, B, C, chunk_size, **kwargs):
        if not _ours(hidden_states, "mamba_ssm") or kwargs.get("seq_idx") is not None:
            return original(hidden_states, dt, A, B, C, chunk_size, **kwargs)
        from ..kernels import ssd

        return ssd.ssd_chunk_scan(hidden_states, dt, A, B, C, chunk_size, **kwargs)

    return mamba2_chunk_scan


def _ssd_state_update(original):
    def mamba2_selective_state_update(state, hidden_states, dt, A, B, C, D=None, **kwargs):
        if not _ours(hidden_states, "mamba_ssm"):
            return original(state, hidden_states, dt, A, B, C, D=D, **kwargs)
        from ..kernels import ssd

        return ssd.ssd_state_update(state, hidden_states, dt, A, B, C, D=D, **kwargs)

    return mamba2_selective_state_update


_MAMBA1 = {
    "causal_conv1d_fn": _conv1d_fn,
    "causal_conv1d_update": _conv1d_update,
    "mamba_selective_scan": _selective_scan,
    "mamba_selective_state_update": _selective_state_update,
}
_PATCHES: dict[str, dict[str, Callable]] = {
    "transformers.models.mamba.modeling_mamba": _MAMBA1,
    "transformers.models.falcon_mamba.modeling_falcon_mamba": _MAMBA1,
    "transformers.models.mamba2.modeling_mamba2": {
        "causal_conv1d_fn": _conv1d_fn,
        "causal_conv1d_update": _conv1d_update,
        "mamba2_chunk_scan": _ssd_chunk_scan,
        "mamba2_selective_state_update": _ssd_state_update,
    },
}
# The mixer class each module defines, to tell which modules a model uses.
_MIXERS = {
    "transformers.models.mamba.modeling_mamba": "MambaMixer",
    "transformers.models.falcon_mamba.modeling_falcon_mamba": "FalconMambaMixer",
    "transformers.models.mamba2.modeling_mamba2": "Mamba2Mixer",
}


def _patch_module(name: str) -> bool:
    if name in _ORIGINALS:
        return True
    try:
        module = importlib.import_module(name)
    except ImportError:
        return False
    originals = {}
    for fn_name, factory in _PATCHES[name].items():
        original = getattr(module, fn_name, None)
        if original is None:
            continue
        originals[fn_name] = original
        replacement = factory(original)
        replacement.__wrapped__ = original
        setattr(module, fn_name, replacement)
    _ORIGINALS[name] = originals
    return True


def patched_modules() -> list[str]:
    """The transformers modules whose functions this project's kernels replace now."""
    return sorted(_ORIGINALS)


def restore() -> None:
    """Put transformers' original functions back (undoes every :func:`accelerate`)."""
    for name, originals in list(_ORIGINALS.items()):
        module = importlib.import_module(name)
        for fn_name, original in originals.items():
            setattr(module, fn_name, original)
        del _ORIGINALS[name]


def accelerate(model: Any) -> Any:
    """Wire this project's kernels into ``model`` (a transformers model, e.g. from ``from_pretrained``).

    Mamba, Mamba-2 and Falcon-Mamba models get the Triton scan / conv / SSD kernels in place of
    transformers' PyTorch fallback (see the module docstring for when each applies). The project's
    own JRT-RNN / Based models already run on these kernels; other models are returned unchanged.
    Idempotent; returns ``model``.
    """
    for name in _mixer_modules(model):
        _patch_module(name)
    return model


def is_accelerated(model: Any) -> bool:
    """Whether every transformers mixer module that ``model`` uses has this project's kernels in place."""
    relevant = _mixer_modules(model)
    return bool(relevant) and all(name in _ORIGINALS for name in relevant)


def _mixer_modules(model: Any) -> list[str]:
    """The transformers modules among ``_MIXERS`` whose mixer class ``model`` contains."""
    if not hasattr(model, "modules"):
        return []
    used = {(type(m).__module__, type(m).__name__) for m in model.modules()}
    return [name for name, mixer in _MIXERS.items() if (name, mixer) in used]
