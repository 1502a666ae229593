"""transformers' Mamba and Mamba-2 decode step, written out over the project's kernels.

transformers' own one-token forward runs about 22 (Mamba) to 29 (Mamba-2) kernels a layer:
the residual stream's casts, an RMSNorm of five element-wise kernels, ``-exp(A_log)`` every
step, transposed copies. At batch 1 a 1.4B model's step is then bound by kernel launches
(about 1,000 a token), not by reading its weights. This step computes the same thing from the
model's own parameters and cache tensors in six or seven kernels a layer: residual add + RMSNorm
(one kernel), the input projection, the conv update, the projections of dt / B / C (Mamba-1),
the state update (with the dt bias, softplus, ``D`` and, for Mamba-1, the ``z`` gate), Mamba-2's
gated RMSNorm, and the output projection. At batch 1 the projections go through the kernels'
one-row linear (:mod:`jrt_prompt.kernels.linear`): such a step is bound by streaming the weights,
which cuBLAS's one-row kernels do at about half the copy bandwidth. Every cast of transformers'
block is kept (the residual stream in float32 when ``residual_in_fp32``, the norm reading it
rounded to the weights' dtype, the final norm reading it unrounded), so the step gives
transformers' numbers; the tests compare it with the model's own forward.

Used by the decode engine for ``mamba`` and ``mamba2`` models whose layers have the standard
layout (SiLU activation, no Mamba-2 MLP split); Falcon-Mamba (extra RMSNorms on B, C, dt) and
anything else keep the model's own step, and so does the harness-faithful mode (its outputs stay
transformers' to the bit). ``JRT_DECODE_STEP=model`` uses the model's own step for every family
(a comparison, or a way around a problem in this one).
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass

import torch

from ..kernels.linear import linear
from ..kernels.mamba import causal_conv1d_update, selective_state_update
from ..kernels.norm import gated_rms_norm, residual_rms_norm
from ..kernels.ssd import ssd_state_update
from .trees import flatten

ACTIVATIONS = ("silu", "swish")


def fused_step_enabled() -> bool:
    return os.environ.get("JRT_DECODE_STEP", "").strip().lower() not in ("model", "transformers", "hf")


@dataclass
class _Layer:
    A: torch.Tensor  # -exp(A_log) in float32, as transformers computes it every step
    conv_weight: torch.Tensor  # [channels, kernel]
    dt_bias: torch.Tensor | None
    D: torch.Tensor  # float32, as transformers' Mamba-1 prefill passes it to the scan


@dataclass
class _Constants:
    key: tuple
    layers: list[_Layer]


_CONSTANTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _key(model) -> tuple:
    # Weights replaced, moved or cast give other pointers / versions: the constants are rebuilt.
    first = model.backbone.layers[0].mixer.A_log
    return (first.data_ptr(), first._version, first.device, first.dtype, len(model.backbone.layers))


def layer_constants(model) -> list[_Layer]:
    """Per-layer constants derived from the weights, computed once per set of weights."""
    key = _key(model)
    held = _CONSTANTS.get(model)
    if held is not None and held.key == key:
        return held.layers
    layers = []
    with torch.no_grad():
        for block in model.backbone.layers:
            mixer = block.mixer
            bias = None
            if getattr(mixer, "dt_proj", None) is not None and mixer.dt_proj.bias is not None:
                bias = mixer.dt_proj.bias.float()
            layers.append(
                _Layer(
                    A=-torch.exp(mixer.A_log.float()),
                    conv_weight=mixer.conv1d.weight.squeeze(1),
                    dt_bias=bias,
                    D=mixer.D.float(),
                )
            )
    _CONSTANTS[model] = _Constants(key, layers)
    return layers


def supports_fused_step(model) -> bool:
    """Whether :func:`fused_ssm_step` computes this model's step (else the model's own forward)."""
    if not fused_step_enabled():
        return False
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", "")
    backbone = getattr(model, "backbone", None)
    if model_type not in ("mamba", "mamba2") or backbone is None or not hasattr(model, "lm_head"):
        return False
    for block in backbone.layers:
        mixer = getattr(block, "mixer", None)
        if mixer is None or getattr(mixer, "activation", None) not in ACTIVATIONS:
            return False
        if not hasattr(block, "norm") or not hasattr(mixer, "A_log"):
            return False
        if model_type == "mamba2":
            inner, heads = mixer.intermediate_size, mixer.num_heads
            conv_dim = inner + 2 * mixer.n_groups * mixer.ssm_state_size
            if mixer.in_proj.out_features != inner + conv_dim + heads:  # an MLP split: not here
                return False
    return True


def layer_states(tree_entry) -> tuple[torch.Tensor, torch.Tensor]:
    """(conv state, recurrent state) of one layer's entry of a Mamba cache tree."""
    conv, recurrent = tree_entry
    conv, recurrent = flatten(conv), flatten(recurrent)
    if len(conv) != 1 or len(recurrent) != 1:
        raise RuntimeError("a Mamba cache layer holds more than one conv / recurrent state")
    return conv[0], recurrent[0]


def fused_ssm_step(model, tree, tokens: torch.Tensor) -> torch.Tensor:
    """One decode step of a transformers Mamba / Mamba-2 model: ``tree`` is the cache's
    [[conv, recurrent], ...] per layer (updated in place), tokens [batch, 1]; returns float32
    logits [batch, vocab]."""
    backbone = model.backbone
    config = model.config
    consts = layer_constants(model)
    residual_in_fp32 = bool(getattr(config, "residual_in_fp32", True))
    hidden = backbone.embeddings(tokens[:, 0])
    residual_dtype = torch.float32 if residual_in_fp32 else hidden.dtype
    residual, delta = hidden, None
    mamba2 = config.model_type == "mamba2"
    for block, const, entry in zip(backbone.layers, consts, tree, strict=True):
        conv_state, ssm_state = layer_states(entry)
        norm = block.norm
        residual, h = residual_rms_norm(
            residual, norm.weight, norm.variance_epsilon, delta, residual_dtype=residual_dtype
        )
        mixer = block.mixer
        if mamba2:
            delta = _mamba2_mixer(mixer, const, h, conv_state, ssm_state)
        else:
            delta = _mamba_mixer(mixer, const, h, conv_state, ssm_state)
    norm_f = backbone.norm_f
    _, h = residual_rms_norm(
        residual,
        norm_f.weight,
        norm_f.variance_epsilon,
        delta,
        residual_dtype=residual_dtype,
        norm_dtype=residual_dtype,
        out_dtype=model.lm_head.weight.dtype,
    )
    return linear(h, model.lm_head.weight, model.lm_head.bias).float()


def _mamba_mixer(mixer, const: _Layer, h, conv_state, ssm_state):
    inner, rank, n = mixer.intermediate_size, mixer.time_step_rank, mixer.ssm_state_size
    xz = linear(h, mixer.in_proj.weight, mixer.in_proj.bias)
    x = causal_conv1d_update(
        xz[:, :inner],
        conv_state,
        const.conv_weight,
        mixer.conv1d.bias if mixer.use_conv_bias else None,
        activation=mixer.activation,
    )
    dbc = linear(x, mixer.x_proj.weight)
    dt = linear(dbc[:, :rank], mixer.dt_proj.weight)
    y = selective_state_update(
        ssm_state,
        x,
        dt,
        const.A,
        dbc[:, rank : rank + n],
        dbc[:, rank + n :],
        mixer.D,
        z=xz[:, inner:],
        dt_bias=const.dt_bias,
        dt_softplus=True,
    )
    return linear(y, mixer.out_proj.weight, mixer.out_proj.bias)


def _mamba2_mixer(mixer, const: _Layer, h, conv_state, ssm_state):
    inner, heads, head_dim = mixer.intermediate_size, mixer.num_heads, mixer.head_dim
    groups, n = mixer.n_groups, mixer.ssm_state_size
    conv_dim = inner + 2 * groups * n
    zxbcdt = linear(h, mixer.in_proj.weight, mixer.in_proj.bias)
    rows = zxbcdt.shape[0]
    xbc = causal_conv1d_update(
        zxbcdt[:, inner : inner + conv_dim],
        conv_state,
        const.conv_weight,
        mixer.conv1d.bias if mixer.use_conv_bias else None,
        activation=mixer.activation,
    )
    dt = zxbcdt[:, inner + conv_dim :]
    y = ssd_state_update(
        ssm_state,
        xbc[:, :inner].unflatten(1, (heads, head_dim)),
        dt[:, :, None].expand(rows, heads, head_dim),
        const.A,
        xbc[:, inner : inner + groups * n].unflatten(1, (groups, n)),
        xbc[:, inner + groups * n :].unflatten(1, (groups, n)),
        D=mixer.D,
        dt_bias=mixer.dt_bias,
        dt_softplus=True,
    )
    norm = mixer.norm
    y = gated_rms_norm(
        y.view(rows, inner),
        zxbcdt[:, :inner],
        norm.weight,
        norm.variance_epsilon,
        getattr(norm, "group_size", inner),
    )
    return linear(y, mixer.out_proj.weight, mixer.out_proj.bias)
