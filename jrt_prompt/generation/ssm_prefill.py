"""transformers' Mamba and Mamba-2 prefill, written out over the project's kernels.

With ``accelerate`` the model's own forward already runs the project's scan and conv kernels, but
the rest of transformers' block stays as written: per layer an RMSNorm of six element-wise kernels
over the float32 residual stream, Mamba-2's gated RMSNorm of eight more over ``d_inner``, masking
multiplies, ``-exp(A_log)`` and ``D.float()`` recomputed, and the final norm over every position
although only the last one's logits are kept. At batch 1 and a few thousand tokens that is half
of the GPU time and, with about 30 launches a layer, as much host time again.

This prefill computes the same thing from the model's parameters: residual add + RMSNorm in one
kernel, the input projection, the conv, the projections of dt / B / C (Mamba-1), the scan (Mamba-1)
or chunked SSD (Mamba-2), Mamba-2's gated RMSNorm in one kernel, the output projection, and the
final norm on the last position only. The casts of transformers' block are kept (the residual
stream in float32 when ``residual_in_fp32``, the norm reading it rounded to the weights' dtype),
left padding is masked as transformers masks it, and the states go into a transformers cache
through the cache's own update methods, so the model's step, the written-out step and
``generate`` all continue from it. Only the order of a few floating-point sums differs (dt's
projection is taken in the layout the scan reads, without a transposed copy), so the results
agree with the model's forward to rounding, not bit for bit; the tests compare them.

:func:`fused_ssm_extend` continues states already in a cache by several tokens at once (every row
the same number of tokens): what reading a question after a stored document needs. transformers'
own multi-token forward cannot do that for Mamba-1 (its scan restarts from a zero state).

Used by the decode engine with the written-out step (:mod:`.ssm_step`, the same models);
``JRT_PREFILL=model`` prefills through the model's own forward instead.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ..kernels import ssd
from ..kernels.mamba import causal_conv1d, selective_scan
from ..kernels.norm import gated_rms_norm, residual_rms_norm
from .ssm_step import layer_constants, layer_states


def fused_prefill_enabled() -> bool:
    return os.environ.get("JRT_PREFILL", "").strip().lower() not in ("model", "transformers", "hf")


def _padding_mask(attention_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    # transformers' rule (create_recurrent_attention_mask): no masking when no row is padded,
    # where multiplying by the mask would change nothing
    if attention_mask is None or attention_mask.dim() != 2 or length == 1:
        return None
    if bool(torch.all(attention_mask == 1)):
        return None
    return attention_mask[:, -length:]


def _masked(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return hidden
    return (hidden * mask[:, :, None]).to(hidden.dtype)


def _mamba_mixer(mixer, const, h, mask, conv_state, ssm_state):
    """h [batch, T, d] → (delta [batch, T, d], conv input [batch, channels, T], final state)."""
    rank, n = mixer.time_step_rank, mixer.ssm_state_size
    xz = F.linear(_masked(h, mask), mixer.in_proj.weight, mixer.in_proj.bias).transpose(1, 2)
    x, gate = xz.chunk(2, dim=1)  # [batch, inner, T] views
    bias = mixer.conv1d.bias if mixer.use_conv_bias else None
    conv = causal_conv1d(x, const.conv_weight, bias, mixer.activation, conv_state)
    conv_t = _masked(conv.transpose(1, 2), mask)  # [batch, T, inner]
    dbc = F.linear(conv_t, mixer.x_proj.weight)
    dt = F.linear(dbc[..., :rank], mixer.dt_proj.weight).transpose(1, 2)  # [batch, inner, T] view
    y, final = selective_scan(
        conv_t.transpose(1, 2),
        dt,
        const.A,
        dbc[..., rank : rank + n].transpose(1, 2),
        dbc[..., rank + n :].transpose(1, 2),
        const.D,
        gate,
        const.dt_bias,
        True,
        ssm_state,
        True,
    )
    delta = F.linear(y.transpose(1, 2).to(h.dtype), mixer.out_proj.weight, mixer.out_proj.bias)
    return delta, x, final


def _mamba2_mixer(mixer, const, h, mask, conv_state, ssm_state):
    inner, heads, head_dim = mixer.intermediate_size, mixer.num_heads, mixer.head_dim
    groups, n = mixer.n_groups, mixer.ssm_state_size
    conv_dim = inner + 2 * groups * n
    batch, length, _ = h.shape
    zxbcdt = F.linear(_masked(h, mask), mixer.in_proj.weight, mixer.in_proj.bias)
    gate, xbc, dt = zxbcdt.split([inner, conv_dim, heads], dim=-1)
    xbc_in = xbc.transpose(1, 2)  # [batch, conv_dim, T] view
    bias = mixer.conv1d.bias if mixer.use_conv_bias else None
    xbc = _masked(
        causal_conv1d(xbc_in, const.conv_weight, bias, mixer.activation, conv_state).transpose(1, 2), mask
    )
    x, B, C = xbc.split([inner, groups * n, groups * n], dim=-1)
    y, final = ssd.ssd_chunk_scan(
        x.view(batch, length, heads, head_dim),
        dt,
        const.A,
        B.view(batch, length, groups, n),
        C.view(batch, length, groups, n),
        mixer.chunk_size,
        D=mixer.D,
        z=None,
        dt_bias=mixer.dt_bias,
        initial_states=ssm_state,
        dt_softplus=True,
        dt_limit=tuple(mixer.time_step_limit),
        return_final_states=True,
    )
    norm = mixer.norm
    y = gated_rms_norm(
        y.reshape(batch * length, inner),
        gate.reshape(batch * length, inner),
        norm.weight,
        norm.variance_epsilon,
        getattr(norm, "group_size", inner),
    )
    delta = F.linear(y.to(h.dtype), mixer.out_proj.weight, mixer.out_proj.bias)
    return delta.view(batch, length, -1), xbc_in, final


def _forward(model, input_ids, mask, layer_states, store) -> torch.Tensor:
    """The blocks over ``input_ids`` [batch, T]; ``layer_states[i]`` is layer i's (conv, ssm) state
    to continue from (None, None for a fresh prompt); ``store(i, conv input, final state)`` keeps a
    layer's new states. Returns the last position's float32 logits [batch, vocab]."""
    backbone, config = model.backbone, model.config
    consts = layer_constants(model)
    mixer_fn = _mamba2_mixer if config.model_type == "mamba2" else _mamba_mixer
    hidden = backbone.embeddings(input_ids)
    batch, length, d = hidden.shape
    residual_dtype = torch.float32 if bool(getattr(config, "residual_in_fp32", True)) else hidden.dtype
    residual, delta = hidden.reshape(batch * length, d), None
    for idx, (block, const) in enumerate(zip(backbone.layers, consts, strict=True)):
        norm = block.norm
        residual, h = residual_rms_norm(
            residual, norm.weight, norm.variance_epsilon, delta, residual_dtype=residual_dtype
        )
        conv_state, ssm_state = layer_states[idx]
        out, conv_input, final = mixer_fn(
            block.mixer, const, h.view(batch, length, d), mask, conv_state, ssm_state
        )
        store(idx, conv_input, final)
        delta = out.reshape(batch * length, d)
    # transformers normalises every position and keeps the last one's logits: the last one only
    last = slice(length - 1, None, length)
    norm_f = backbone.norm_f
    _, h = residual_rms_norm(
        residual[last],
        norm_f.weight,
        norm_f.variance_epsilon,
        delta[last],
        residual_dtype=residual_dtype,
        norm_dtype=residual_dtype,
        out_dtype=model.lm_head.weight.dtype,
    )
    return model.lm_head(h).float()


def fused_ssm_prefill(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """Prefill of a transformers Mamba / Mamba-2 model (left padding marked by ``attention_mask``):
    (float32 logits of the last position [batch, vocab], a transformers cache holding the states)."""
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache(config=model.config)
    kernel = model.backbone.layers[0].mixer.conv_kernel_size

    def store(idx, conv_input, final):
        # the cache's own update keeps (or left-pads to) the last `kernel` conv inputs
        cache.update_conv_state(conv_input, idx, conv_kernel_size=kernel)
        cache.update_recurrent_state(final, idx)

    mask = _padding_mask(attention_mask, input_ids.shape[1])
    states = [(None, None)] * len(model.backbone.layers)
    return _forward(model, input_ids, mask, states, store), cache


def fused_ssm_extend(model, tree, input_ids: torch.Tensor) -> torch.Tensor:
    """Continue the states of ``tree`` ([[conv, recurrent], ...] per layer, updated in place) by
    ``input_ids`` [batch, T] (no padding); returns the last position's float32 logits."""
    states = [layer_states(entry) for entry in tree]

    def store(idx, conv_input, final):
        conv_state, ssm_state = states[idx]
        width = conv_state.shape[-1]
        conv_state.copy_(torch.cat([conv_state, conv_input.to(conv_state.dtype)], dim=-1)[..., -width:])
        ssm_state.copy_(final)

    # each layer's conv reads its previous inputs from its state before its store overwrites it
    return _forward(model, input_ids, None, states, store)
