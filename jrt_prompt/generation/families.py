"""Where each constant-state family keeps its recurrent state, for the decode engine.

A :class:`StateFamily` knows four things about one family of models:

* ``prefill(model, input_ids, attention_mask)``: the model's own forward over the prompt with
  its cache, returning the last position's logits and the cache;
* ``tree(cache)`` / ``set_tree(cache, tree)``: the cache's tensors as nested lists / dicts /
  tuples (batch first), and putting such a tree back;
* ``step(model, cache, tokens)``: one decode step, logits of the new token;
* optionally ``extend(model, tree, input_ids)``: the states of ``tree`` continued by several
  tokens per row in one forward (updated in place), logits of the last one. Families without it
  are continued a token at a time through their step.

The engine copies the prefilled tree into static buffers, points the cache at them, and after
every step copies whatever tensors the step put in their place back into the buffers, so a
captured CUDA graph always reads and writes the same addresses. Families that update in place
(transformers' Mamba / Mamba-2 / Falcon-Mamba caches, RWKV's state list, the project's linear
attention and BaseConv states) need no copy; the others (the sliding-window KV of JRT-RNN and
Based, fla's caches, JRT's next rotary positions) are copied back.

transformers' Mamba and Mamba-2 prefill and decode through a forward and a step written out over
the project's kernels (:mod:`.ssm_prefill`, :mod:`.ssm_step`) unless ``JRT_PREFILL=model`` /
``JRT_DECODE_STEP=model``; the other families through the model's own forward.

Covered: transformers' ``mamba``, ``falcon_mamba``, ``mamba2`` and ``rwkv`` models; the project's
:class:`~jrt_prompt.models.modeling_jrt.JRTForCausalLM` when every layer holds a constant-size
state (BaseConv, Based, prefix linear attention, sliding-window attention); fla's recurrent models
(GLA, RWKV-6/7, GatedDeltaNet, ...) without softmax-attention layers. fla runs on CUDA only, so
its path is exercised on the GPU only (not in CPU tests).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from . import ssm_prefill, ssm_step
from .trees import flatten, unflatten

__all__ = ["StateFamily", "family_of", "flatten", "pad_windows", "unflatten"]

CONSTANT_JRT_MIXERS = ("base_conv", "based", "prefix_linear", "sliding_window")
HF_SSM_TYPES = ("mamba", "falcon_mamba", "mamba2")
FLA_RECURRENT_TYPES = (
    "gla",
    "rwkv6",
    "rwkv7",
    "gated_deltanet",
    "delta_net",
    "hgrn",
    "hgrn2",
    "retnet",
    "linear_attn",
    "gsa",
    "mamba",
    "mamba2",
)


@dataclass(frozen=True)
class StateFamily:
    name: str
    prefill: Callable[[Any, torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, Any]]
    tree: Callable[[Any], Any]
    set_tree: Callable[[Any, Any], None]
    step: Callable[[Any, Any, torch.Tensor], torch.Tensor]
    masks_padding: bool = True  # a left-padded prefill gives each row its own state
    extend: Callable[[Any, Any, torch.Tensor], torch.Tensor] | None = None


def _last_logits(out) -> torch.Tensor:
    return out.logits[:, -1]


# --------------------------------------------------------------------------------------------
# transformers' Mamba, Falcon-Mamba, Mamba-2: DynamicCache of LinearAttentionLayer (5.x)


def _cache_keyword(model) -> str:
    """transformers 5.24 calls the recurrent cache ``cache``; earlier 5.x ``cache_params``."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "cache_params"


def _hf_ssm_prefill(model, input_ids, attention_mask):
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, logits_to_keep=1)
    cache = out.get("cache") if out.get("cache") is not None else out.get("cache_params")
    if cache is None:
        raise RuntimeError(f"{type(model).__name__} returned no cache from a forward with use_cache=True")
    return _last_logits(out), cache


def _hf_ssm_tree(cache):
    return [[layer.conv_states, layer.recurrent_states] for layer in cache.layers]


def _hf_ssm_set_tree(cache, tree) -> None:
    for layer, (conv, recurrent) in zip(cache.layers, tree, strict=True):
        layer.conv_states, layer.recurrent_states = conv, recurrent


def _hf_ssm_step(model, cache, tokens):
    out = model(input_ids=tokens, use_cache=True, **{_cache_keyword(model): cache})
    return _last_logits(out)


HF_SSM = StateFamily("transformers-ssm", _hf_ssm_prefill, _hf_ssm_tree, _hf_ssm_set_tree, _hf_ssm_step)


def _hf_ssm_fused_prefill(model, input_ids, attention_mask):
    if not ssm_prefill.fused_prefill_enabled():
        return _hf_ssm_prefill(model, input_ids, attention_mask)
    return ssm_prefill.fused_ssm_prefill(model, input_ids, attention_mask)


def _hf_ssm_fused_step(model, cache, tokens):
    return ssm_step.fused_ssm_step(model, _hf_ssm_tree(cache), tokens)


# Mamba / Mamba-2 with the forward and the step written out over the project's kernels (see
# .ssm_prefill, .ssm_step): the same cache and numbers to rounding, a fraction of the kernel
# launches, and questions read after a stored document in one forward.
HF_SSM_FUSED = StateFamily(
    "transformers-ssm-fused",
    _hf_ssm_fused_prefill,
    _hf_ssm_tree,
    _hf_ssm_set_tree,
    _hf_ssm_fused_step,
    extend=ssm_prefill.fused_ssm_extend,
)


# --------------------------------------------------------------------------------------------
# transformers' RWKV (v4): a list of five [batch, hidden, layers] tensors, ignores the mask


def _rwkv_prefill(model, input_ids, attention_mask):
    if input_ids.shape[1] == 1 and input_ids.shape[0] > 1:
        # One-token prompts take transformers' one-token branch (see _rwkv_step): one row at a time.
        rows = [_rwkv_prefill(model, row[None], None) for row in input_ids]
        logits = torch.cat([r[0] for r in rows])
        return logits, [torch.cat([r[1][i] for r in rows]) for i in range(len(rows[0][1]))]
    out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
    return _last_logits(out), list(out.state)


def _rwkv_set_tree(cache, tree) -> None:
    cache[:] = tree


def _rwkv_step(model, state, tokens):
    """One token through transformers' RWKV blocks, written out: its own one-token branch mixes
    the token shift of every row into every other row when the batch has more than one row
    (``shifted`` is [batch, hidden] against hidden [batch, 1, hidden]; transformers 5.17-5.24).
    The modules and their parameters are the model's; the state is updated in place."""
    from transformers.models.rwkv.modeling_rwkv import rwkv_linear_attention

    rwkv = model.rwkv
    hidden = rwkv.embeddings(tokens)
    for idx, block in enumerate(rwkv.blocks):
        layer = block.layer_id
        if layer == 0:
            hidden = block.pre_ln(hidden)
        att = block.attention
        x = block.ln1(hidden)
        shifted = state[1][:, :, layer][:, None]
        key = att.key(x * att.time_mix_key + shifted * (1 - att.time_mix_key))
        value = att.value(x * att.time_mix_value + shifted * (1 - att.time_mix_value))
        receptance = torch.sigmoid(
            att.receptance(x * att.time_mix_receptance + shifted * (1 - att.time_mix_receptance))
        )
        state[1][:, :, layer] = x[:, -1]
        wkv, (num, den, top) = rwkv_linear_attention(
            att.time_decay,
            att.time_first,
            key,
            value,
            state=tuple(s[:, :, layer] for s in state[2:]),
            return_state=True,
        )
        state[2][:, :, layer], state[3][:, :, layer], state[4][:, :, layer] = num, den, top
        hidden = hidden + att.output(receptance * wkv)
        ffn = block.feed_forward
        x = block.ln2(hidden)
        shifted = state[0][:, :, layer][:, None]
        k = torch.square(torch.relu(ffn.key(x * ffn.time_mix_key + shifted * (1 - ffn.time_mix_key))))
        r = torch.sigmoid(
            ffn.receptance(x * ffn.time_mix_receptance + shifted * (1 - ffn.time_mix_receptance))
        )
        state[0][:, :, layer] = x[:, -1]
        hidden = hidden + r * ffn.value(k)
        every = rwkv.config.rescale_every
        if rwkv.layers_are_rescaled and every > 0 and (idx + 1) % every == 0:
            hidden = hidden / 2
    return model.head(rwkv.ln_out(hidden))[:, -1].float()


RWKV = StateFamily("rwkv", _rwkv_prefill, lambda cache: list(cache), _rwkv_set_tree, _rwkv_step, False)


# --------------------------------------------------------------------------------------------
# The project's JRTForCausalLM (JRT-RNN, Based, the demo model)


def _jrt_prefill(model, input_ids, attention_mask):
    out = model(input_ids, attention_mask=attention_mask, use_cache=True, logits_to_keep=1)
    from ..models.modeling_jrt import output_cache

    return _last_logits(out), pad_windows(model, output_cache(out))


def pad_windows(model, cache):
    """Give every sliding-window layer of a JRTCache a full window (constant shapes): the window
    is filled on the left with keys marked invalid, which softmax attention gives no weight,
    exactly as if they were not there."""
    window = model.config.sliding_window
    for i, entry in enumerate(cache.layers):
        if isinstance(entry, dict) and entry["k"].shape[1] < window:
            missing = window - entry["k"].shape[1]
            cache.layers[i] = {
                "k": torch.nn.functional.pad(entry["k"], (0, 0, 0, 0, missing, 0)),
                "v": torch.nn.functional.pad(entry["v"], (0, 0, 0, 0, missing, 0)),
                "valid": torch.nn.functional.pad(entry["valid"], (missing, 0), value=False),
            }
    return cache


def _jrt_tree(cache):
    return {"layers": cache.layers, "next_positions": cache.next_positions}


def _jrt_set_tree(cache, tree) -> None:
    cache.layers = tree["layers"]
    cache.next_positions = tree["next_positions"]


def _jrt_step(model, cache, tokens):
    return _last_logits(model(tokens, past_key_values=cache, use_cache=True))


JRT = StateFamily("jrt", _jrt_prefill, _jrt_tree, _jrt_set_tree, _jrt_step)


# --------------------------------------------------------------------------------------------
# fla's models (GLA, RWKV-6/7, GatedDeltaNet, ...): fla.models.utils.Cache, CUDA only


def _fla_prefill(model, input_ids, attention_mask):
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, logits_to_keep=1)
    return _last_logits(out), out.past_key_values


def _fla_layers(cache) -> list:
    # fla's FLACache keeps one FLALayer per layer (``.state`` dict); its LegacyFLACache a list.
    if hasattr(cache, "states"):
        return cache.states
    return [layer.state for layer in cache.layers]


def _fla_tree(cache):
    return [dict(state) for state in _fla_layers(cache)]


def _fla_set_tree(cache, tree) -> None:
    for state, new in zip(_fla_layers(cache), tree, strict=True):
        state.update(new)


def _fla_step(model, cache, tokens):
    return _last_logits(model(input_ids=tokens, past_key_values=cache, use_cache=True))


FLA = StateFamily("fla", _fla_prefill, _fla_tree, _fla_set_tree, _fla_step)


# --------------------------------------------------------------------------------------------


def family_of(model) -> StateFamily | None:
    """The engine's family for ``model``, or None when its state grows with the sequence (a
    Transformer, softmax-attention layers) or the model is unknown."""
    from ..models.modeling_jrt import JRTForCausalLM

    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", "")
    module = type(model).__module__
    if isinstance(model, JRTForCausalLM):
        if all(kind in CONSTANT_JRT_MIXERS for kind in config.layer_mixers):
            return JRT
        return None
    if module.startswith("fla."):
        attn = getattr(config, "attn", None)
        if model_type in FLA_RECURRENT_TYPES and not attn:
            return FLA
        return None
    if module.startswith("transformers."):
        if model_type in HF_SSM_TYPES:
            return HF_SSM_FUSED if ssm_step.supports_fused_step(model) else HF_SSM
        if model_type == "rwkv":
            return RWKV
    return None
