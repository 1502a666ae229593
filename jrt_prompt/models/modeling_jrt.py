"""JRT-RNN, Based and the GPT-style attention baseline as one transformers model.

The released JRT-RNN and Based checkpoints share one architecture: a pre-norm GPT-style stack
whose token mixer changes from layer to layer (BaseConv, Based linear attention, prefix linear
attention, sliding-window attention). The attention baseline of the same paper is the same stack
with full causal attention in every layer. ``JRTConfig.layer_mixers`` is that per-layer schedule,
as data; everything else (norms, SwiGLU MLP, fp32 residual stream, tied head over the padded
vocabulary) is shared.

Module names follow the published state-dict layout (``transformer.layers.{i}.mixer.proj_q`` ...),
so a converted checkpoint loads with ``load_state_dict(strict=True)``.

Inference keeps one state per layer (:class:`JRTCache`): linear attention keeps the running
``Σ φ(k)⊗v`` and ``Σ φ(k)``, BaseConv its last conv inputs, sliding-window attention the keys and
values of its window only; full attention keeps a growing KV cache. Prefix linear attention
reads the first ``min(enc_length, prompt)`` real tokens of the prompt a second time, non-causally,
through its own key/value projections; tokens that come later (continued prompts, generated
tokens) only ever update the causal part of the state.

Two inference modes (``config.inference_mode``, see docs/inference_modes.md):

* ``"default"``: left padding is masked in every mixer (a padded batch gives each row the answer
  it gets alone), states accumulate in fp32.
* ``"reference"``: the published evaluation harness's numerics: padding is attended to except
  for the harness's own padding in prefix linear attention (zeroed raw keys, so the constant
  feature still counts), positions start at the first (pad) token, linear-attention states are
  rounded to bf16 after every update, Based decoding adds ``φ(k)⊗v`` to its state twice.

The mixers call only the ops of :mod:`jrt_prompt.kernels` (Triton on CUDA, PyTorch elsewhere).
Around them the fast stack (the default) runs sliding-window attention over windowed blocks
(:mod:`.sliding_window`, never an N×N mask) and the element-wise parts as single functions
compiled on CUDA (:mod:`.fused`: add + RMSNorm, SwiGLU, BaseConv's conv and gate, rotary);
``JRT_STACK=legacy`` selects the earlier op-by-op path, same math, kept to measure against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from jrt_prompt.errors import JRTError
from jrt_prompt.kernels import (
    LinearAttentionState,
    based_linear_attention,
    linear_attention_step,
    prefix_linear_attention,
    taylor_feature_map,
)
from jrt_prompt.kernels.linear import linear

from . import fused
from .sliding_window import (
    block_size_for,
    flex_window_mask,
    sliding_window_attention_blocks,
    sliding_window_attention_flex,
    sliding_window_attention_masked,
    window_block_mask,
)

MIXER_KINDS = ("base_conv", "based", "prefix_linear", "sliding_window", "attention")
INFERENCE_MODES = ("default", "reference")


def hazy_layer_schedule(
    num_layers: int, linear_mixer: str, linear_layers=None, window_layers=None
) -> list[str]:
    """The hybrid schedule of the released checkpoints: linear attention at ``linear_layers``,
    sliding-window attention at ``window_layers``, BaseConv everywhere else.

    Without explicit indices the period-5 pattern of the 360M models is used (linear attention at
    1, 6, 11, ..., sliding window at 2, 7, 12, ...).
    """
    if linear_layers is None:
        linear_layers = [i for i in range(num_layers) if i % 5 == 1]
    if window_layers is None:
        window_layers = [i for i in range(num_layers) if i % 5 == 2]
    schedule = []
    for i in range(num_layers):
        if i in window_layers:
            schedule.append("sliding_window")
        elif i in linear_layers:
            schedule.append(linear_mixer)
        else:
            schedule.append("base_conv")
    return schedule


class JRTConfig(PretrainedConfig):
    """Configuration of :class:`JRTForCausalLM`.

    Sizes: ``hidden_size`` (d), ``num_hidden_layers``, ``intermediate_size`` (SwiGLU hidden width,
    default 2d), ``vocab_size`` (the tokenizer's) and ``pad_vocab_size_multiple`` (the embedding
    and the logits have ``padded_vocab_size`` rows).

    ``layer_mixers``: one of ``MIXER_KINDS`` per layer. Default: the JRT-RNN pattern
    (``prefix_linear`` at i % 5 == 1, ``sliding_window`` at i % 5 == 2, ``base_conv`` elsewhere).

    Linear attention (``based``, ``prefix_linear``): ``num_heads`` heads, each with queries/keys of
    ``feature_dim`` channels (expanded by the Taylor map to 1 + f + f²) and values of d / num_heads.
    ``enc_length``: prefix linear attention reads the first ``enc_length`` prompt tokens twice.

    Softmax attention (``sliding_window``, ``attention``): ``attention_heads`` heads of
    d / attention_heads channels; rotary embedding (GPT-NeoX layout, ``rotary_emb_base``) on the
    first ``int(rotary_emb_fraction * head_dim)`` channels. ``sliding_window``: the number of
    earlier tokens a query sees besides itself (the released checkpoints' ``window_size: 256``
    is flash-attn window (128, 0), i.e. 128 here).

    BaseConv: ``conv_expand`` · d input projection, split into a conv branch and a gate branch,
    causal depthwise conv of ``conv_kernel_size`` taps.
    """

    model_type = "jrt_hybrid"

    def __init__(
        self,
        vocab_size: int = 50257,
        pad_vocab_size_multiple: int = 8,
        hidden_size: int = 1024,
        num_hidden_layers: int | None = None,
        layer_mixers: list[str] | None = None,
        intermediate_size: int | None = None,
        num_heads: int = 16,
        feature_dim: int = 16,
        linear_attention_eps: float = 1e-12,
        enc_length: int = 1024,
        attention_heads: int = 16,
        sliding_window: int = 128,
        rotary_emb_fraction: float = 1.0,
        rotary_emb_base: float = 10000.0,
        conv_kernel_size: int = 3,
        conv_expand: int = 4,
        rms_norm_eps: float = 1e-5,
        residual_in_fp32: bool = True,
        initializer_range: float = 0.02,
        inference_mode: str = "default",
        tie_word_embeddings: bool = True,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        **kwargs,
    ):
        if layer_mixers is None:
            layer_mixers = hazy_layer_schedule(
                26 if num_hidden_layers is None else num_hidden_layers, "prefix_linear"
            )
        layer_mixers = list(layer_mixers)
        if num_hidden_layers is None:
            num_hidden_layers = len(layer_mixers)
        self.vocab_size = vocab_size
        self.pad_vocab_size_multiple = pad_vocab_size_multiple
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.layer_mixers = layer_mixers
        self.intermediate_size = 2 * hidden_size if intermediate_size is None else intermediate_size
        self.num_heads = num_heads
        self.feature_dim = feature_dim
        self.linear_attention_eps = linear_attention_eps
        self.enc_length = enc_length
        self.attention_heads = attention_heads
        self.sliding_window = sliding_window
        self.rotary_emb_fraction = rotary_emb_fraction
        self.rotary_emb_base = rotary_emb_base
        self.conv_kernel_size = conv_kernel_size
        self.conv_expand = conv_expand
        self.rms_norm_eps = rms_norm_eps
        self.residual_in_fp32 = residual_in_fp32
        self.initializer_range = initializer_range
        self.inference_mode = inference_mode
        super().__init__(
            tie_word_embeddings=tie_word_embeddings,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            **kwargs,
        )
        self.validate_layout()

    @property
    def padded_vocab_size(self) -> int:
        multiple = max(1, int(self.pad_vocab_size_multiple or 1))
        return math.ceil(self.vocab_size / multiple) * multiple

    def validate_layout(self) -> None:
        """Raise :class:`JRTError` for a schedule or size the model cannot be built from."""
        unknown = sorted({m for m in self.layer_mixers if m not in MIXER_KINDS})
        if unknown:
            raise JRTError(f"layer_mixers contains {unknown}; use only {list(MIXER_KINDS)}")
        if len(self.layer_mixers) != self.num_hidden_layers:
            raise JRTError(
                f"layer_mixers has {len(self.layer_mixers)} entries but num_hidden_layers is "
                f"{self.num_hidden_layers}; give one mixer per layer"
            )
        uses = set(self.layer_mixers)
        if uses & {"based", "prefix_linear"} and self.hidden_size % self.num_heads:
            raise JRTError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if uses & {"sliding_window", "attention"} and self.hidden_size % self.attention_heads:
            raise JRTError(
                f"hidden_size {self.hidden_size} is not divisible by attention_heads {self.attention_heads}"
            )
        if self.conv_expand % 2:
            raise JRTError(f"conv_expand must be even (conv branch | gate branch), got {self.conv_expand}")
        if self.inference_mode not in INFERENCE_MODES:
            raise JRTError(f"inference_mode {self.inference_mode!r} is not one of {list(INFERENCE_MODES)}")


# --------------------------------------------------------------------------------------------
# Per-call context and the recurrent cache


@dataclass
class MixerInputs:
    """What every mixer needs besides its hidden states, for one forward call.

    mask: [b, l] bool, True = real token (default mode; None when every token is real).
    positions: [b, l] rotary positions.
    reference: the published harness's numerics (see the module docstring).
    harness_pad_mask: [b, l] bool, reference mode only: False on the padding the harness added
        to reach ``enc_length`` tokens (read by prefix linear attention only).
    settings: which stack runs (:class:`fused.StackSettings`: the fused functions and the blocked
        sliding window by default, the earlier op-by-op path with ``JRT_STACK=legacy``).
    shared: tensors derived once per call and reused by every layer (rotary tables, the
        sliding-window masks).
    """

    mask: torch.Tensor | None
    positions: torch.Tensor
    reference: bool
    harness_pad_mask: torch.Tensor | None = None
    settings: fused.StackSettings = fused.StackSettings()
    shared: dict = field(default_factory=dict)

    @property
    def fast(self) -> bool:
        return self.settings.fast

    def rotary_tables(self, rotary_dim: int, base: float):
        """cos, sin [b, l, 1, ceil(rotary_dim / 2)] fp32 at ``positions``, computed once per call."""
        key = ("rotary", rotary_dim, base)
        if key not in self.shared:
            angles = self.positions.to(torch.float32)[..., None] * _inv_freq(
                rotary_dim, base, self.positions.device
            )
            self.shared[key] = (angles.cos()[:, :, None, :], angles.sin()[:, :, None, :])
        return self.shared[key]


_INV_FREQ: dict = {}


def _inv_freq(rotary_dim: int, base: float, device) -> torch.Tensor:
    key = (rotary_dim, float(base), str(device))
    if key not in _INV_FREQ:
        with torch.inference_mode(False), torch.no_grad():
            _INV_FREQ[key] = 1.0 / base ** (
                torch.arange(0, rotary_dim, 2, device=device, dtype=torch.float32) / rotary_dim
            )
    return _INV_FREQ[key]


class JRTCache:
    """Per-layer inference state of :class:`JRTForCausalLM`.

    ``layers[i]`` is set at prefill: a :class:`LinearAttentionState` (fp32 kv and k sums) for
    linear attention, a [b, channels, kernel-1] tensor of the last conv inputs for BaseConv, a
    dict ``{"k", "v", "valid"}`` for softmax attention (sliding-window layers: the window only,
    and after a fast prefill a ring of ``window + 1`` slots updated in place, with ``"slot"`` the next
    one to overwrite). ``next_positions[b]`` is the rotary position of row b's next token.
    """

    is_compileable = False
    is_croppable = False

    def __init__(self, num_layers: int):
        self.layers: list[Any] = [None] * num_layers
        self.seen_tokens = 0
        self.next_positions: torch.Tensor | None = None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def state_bytes(self) -> int:
        """Bytes held by all layers' states (used to show that decoding is constant-memory)."""
        total = 0
        for entry in self.layers:
            if entry is None:
                continue
            if isinstance(entry, LinearAttentionState):
                tensors = [entry.kv, entry.ksum]
            elif isinstance(entry, dict):
                tensors = list(entry.values())
            else:
                tensors = [entry]
            total += sum(t.numel() * t.element_size() for t in tensors)
        return total

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for i, entry in enumerate(self.layers):
            if entry is None:
                continue
            if isinstance(entry, LinearAttentionState):
                self.layers[i] = LinearAttentionState(kv=entry.kv[beam_idx], ksum=entry.ksum[beam_idx])
            elif isinstance(entry, dict):
                self.layers[i] = {k: t[beam_idx] for k, t in entry.items()}
            else:
                self.layers[i] = entry[beam_idx]
        if self.next_positions is not None:
            self.next_positions = self.next_positions[beam_idx]


def _kernel_precision(x: torch.Tensor):
    """Run a kernel op outside autocast: the ops choose their own accumulation precision and
    return fp32 states; autocast would silently turn the state einsums into bf16."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _round_state_to_bf16(state: LinearAttentionState) -> None:
    """Reference mode: the harness stores linear-attention states in bf16."""
    state.kv.copy_(state.kv.to(torch.bfloat16).to(state.kv.dtype))
    state.ksum.copy_(state.ksum.to(torch.bfloat16).to(state.ksum.dtype))


# --------------------------------------------------------------------------------------------
# Building blocks


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state-dict keys). In the fast stack a call on one row
    (a batch-1 decode step) goes through the kernels' one-row linear
    (:func:`jrt_prompt.kernels.linear.linear`): such a step is bound by streaming the weights,
    which cuBLAS's one-row kernels do at about half the copy bandwidth. More rows, float32, CPU,
    calls that want gradients and the legacy stack run ``F.linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one row first: a prefill's call pays one comparison, not the stack's setting and checks
        if x.numel() == x.shape[-1] and fused.stack_mode() == "fast":
            return linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


class JRTRMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · weight, computed in fp32, returned in the weight's dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, settings: fused.StackSettings = fused.LEGACY) -> torch.Tensor:
        if settings.fast:
            return fused.run(fused.rms_norm, x, self.weight, self.eps, compile=settings.compile)
        return fused.rms_norm(x, self.weight, self.eps)

    def add_and_norm(self, residual: torch.Tensor, delta: torch.Tensor | None, settings: fused.StackSettings):
        """(residual + delta, norm(residual + delta)) in one fused pass on the fast path."""
        if delta is None:
            return residual, self(residual, settings)
        if settings.fast:
            return fused.run(
                fused.add_rms_norm, residual, delta, self.weight, self.eps, compile=settings.compile
            )
        residual = residual + delta.to(residual.dtype)
        return residual, self(residual)


def apply_rotary(x: torch.Tensor, positions: torch.Tensor, rotary_dim: int, base: float) -> torch.Tensor:
    """GPT-NeoX rotary embedding on the first channels of each head.

    x: [b, l, h, hd]; positions: [b, l]. Channel i is paired with i + ceil(rotary_dim / 2) and
    rotated by position · base^(-2i / rotary_dim). For an odd ``rotary_dim`` this rotates
    ``rotary_dim + 1`` channels, as flash-attn's RotaryEmbedding does (attn-1b: 35 -> 36).
    """
    if rotary_dim <= 0:
        return x
    inv_freq = 1.0 / base ** (
        torch.arange(0, rotary_dim, 2, device=x.device, dtype=torch.float32) / rotary_dim
    )
    half = inv_freq.numel()
    angles = positions.to(torch.float32)[..., None] * inv_freq  # [b, l, half]
    cos = angles.cos()[:, :, None, :]
    sin = angles.sin()[:, :, None, :]
    x1 = x[..., :half].float()
    x2 = x[..., half : 2 * half].float()
    rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
    return torch.cat([rotated, x[..., 2 * half :]], dim=-1)


class SwiGLU(nn.Module):
    """fc1 -> [value | gate], value · SiLU(gate) -> fc2; no biases."""

    def __init__(self, config: JRTConfig):
        super().__init__()
        self.fc1 = Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.fc2 = Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, settings: fused.StackSettings = fused.LEGACY) -> torch.Tensor:
        if settings.fast:
            return self.fc2(fused.run(fused.swiglu, self.fc1(x), compile=settings.compile))
        value, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(value * F.silu(gate))


class ShortConvolution(nn.Module):
    """Holds the depthwise conv weight under the published name ``conv.conv.weight``."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, bias=False)


class BaseConv(nn.Module):
    """in_proj -> [conv branch | gate branch]; SiLU(causal short conv(conv branch)) · gate -> out_proj."""

    def __init__(self, config: JRTConfig, layer_idx: int):
        super().__init__()
        d = config.hidden_size
        self.inner = config.conv_expand * d // 2
        self.kernel_size = config.conv_kernel_size
        self.in_proj = Linear(d, 2 * self.inner, bias=True)
        self.conv = ShortConvolution(self.inner, self.kernel_size)
        self.out_proj = Linear(self.inner, d, bias=True)

    def forward(self, x: torch.Tensor, inputs: MixerInputs, use_cache: bool):
        if not inputs.fast:
            return self._forward_legacy(x, inputs, use_cache)
        l = x.shape[1]
        projected = self.in_proj(x)  # [b, l, conv branch | gate]
        weight = self.conv.conv.weight[:, 0, :]
        gated = fused.run(
            fused.short_conv_gate, projected, weight, inputs.mask, compile=inputs.settings.compile
        )
        y = self.out_proj(gated)
        state = None
        if use_cache:
            keep = self.kernel_size - 1
            tail = projected[:, max(0, l - keep) :, : self.inner]
            if inputs.mask is not None:
                tail = tail * inputs.mask[:, max(0, l - keep) :, None].to(tail.dtype)
            state = F.pad(tail.transpose(1, 2), (max(0, keep - l), 0)).contiguous()
        return y, state

    def _forward_legacy(self, x: torch.Tensor, inputs: MixerInputs, use_cache: bool):
        l = x.shape[1]
        conv_in, gate = self.in_proj(x).split(self.inner, dim=-1)
        if inputs.mask is not None:
            # Padding enters the conv as the zeros a row alone would see left of its first token.
            conv_in = conv_in * inputs.mask[..., None].to(conv_in.dtype)
        conv_in = conv_in.transpose(1, 2)  # [b, c, l]
        weight = self.conv.conv.weight
        conv_out = F.conv1d(conv_in, weight, padding=self.kernel_size - 1, groups=self.inner)[..., :l]
        y = self.out_proj(F.silu(conv_out).transpose(1, 2) * gate)
        state = None
        if use_cache:
            keep = self.kernel_size - 1
            state = F.pad(conv_in, (max(0, keep - l), 0))[..., -keep:] if keep > 0 else conv_in[..., :0]
            state = state.contiguous()
        return y, state

    def step(self, x: torch.Tensor, inputs: MixerInputs, state: torch.Tensor):
        if inputs.fast:
            weight = self.conv.conv.weight[:, 0, :]
            gated, window = fused.run(
                fused.short_conv_gate_step,
                self.in_proj(x[:, 0]),
                state,
                weight,
                compile=inputs.settings.compile,
            )
            if window is not state:  # the Triton op rolls the state in place and returns it
                state.copy_(window)
            return self.out_proj(gated)[:, None]
        conv_in, gate = self.in_proj(x[:, 0]).split(self.inner, dim=-1)  # [b, c]
        window = torch.cat([state, conv_in[..., None]], dim=-1)  # [b, c, k]
        conv_out = (window * self.conv.conv.weight[:, 0, :]).sum(-1)
        state.copy_(window[..., 1:])
        return self.out_proj(F.silu(conv_out) * gate)[:, None]


class BasedLinearAttention(nn.Module):
    """Causal linear attention with the 2nd-order Taylor feature map (Based)."""

    def __init__(self, config: JRTConfig, layer_idx: int):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_heads
        self.feature_dim = config.feature_dim
        self.head_dim = d // config.num_heads
        self.eps = config.linear_attention_eps
        self.proj_q = Linear(d, self.num_heads * self.feature_dim, bias=False)
        self.proj_k = Linear(d, self.num_heads * self.feature_dim, bias=False)
        self.proj_v = Linear(d, self.num_heads * self.head_dim, bias=False)
        self.out_proj = Linear(self.num_heads * self.head_dim, d, bias=False)

    def _qkv(self, x: torch.Tensor):
        b, l, _ = x.shape
        q = self.proj_q(x).view(b, l, self.num_heads, self.feature_dim)
        k = self.proj_k(x).view(b, l, self.num_heads, self.feature_dim)
        v = self.proj_v(x).view(b, l, self.num_heads, self.head_dim)
        return q, k, v

    def forward(self, x: torch.Tensor, inputs: MixerInputs, use_cache: bool):
        b, l, _ = x.shape
        q, k, v = self._qkv(x)
        # The harness's prefill kernel (fla parallel_based) normalises with +1e-6.
        eps = 1e-6 if inputs.reference else self.eps
        mask = None if inputs.reference else inputs.mask
        with _kernel_precision(x):
            o, state = based_linear_attention(q, k, v, mask=mask, eps=eps, output_final_state=use_cache)
        if state is not None and inputs.reference:
            _round_state_to_bf16(state)
        return self.out_proj(o.reshape(b, l, -1)), state

    def step(self, x: torch.Tensor, inputs: MixerInputs, state: LinearAttentionState):
        b = x.shape[0]
        q, k, v = self._qkv(x)
        q, k, v = q[:, 0], k[:, 0], v[:, 0]
        with _kernel_precision(x):
            if inputs.reference:
                # The harness's recurrent step adds φ(k)⊗v to the kv sum twice (the k sum once).
                phi_k = taylor_feature_map(k.float())
                state.kv.add_(phi_k[..., :, None] * v.float()[..., None, :])
            o = linear_attention_step(q, k, v, state, eps=self.eps)
        if inputs.reference:
            _round_state_to_bf16(state)
        return self.out_proj(o.reshape(b, 1, -1))


class PrefixLinearAttention(BasedLinearAttention):
    """JRT-RNN's mixer: Based linear attention plus a non-causal read of the prompt's first
    ``enc_length`` tokens through separate key/value projections, one shared normaliser."""

    def __init__(self, config: JRTConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        d = config.hidden_size
        self.enc_length = config.enc_length
        self.proj_k_enc = Linear(d, self.num_heads * self.feature_dim, bias=False)
        self.proj_v_enc = Linear(d, self.num_heads * self.head_dim, bias=False)

    def forward(self, x: torch.Tensor, inputs: MixerInputs, use_cache: bool):
        b, l, _ = x.shape
        q, k, v = self._qkv(x)
        if inputs.reference:
            # Encoder = the first min(enc_length, l) positions, padding included. The harness's
            # own padding has its raw keys zeroed (φ(0) keeps the constant feature) and only when
            # the whole prefill is the encoder.
            enc_x = x
            enc_lengths: int | torch.Tensor = min(self.enc_length, l)
            mask = None
        elif inputs.mask is None:
            enc_x = x
            enc_lengths = min(self.enc_length, l)
            mask = None
        else:
            # Encoder = the first enc_length *real* tokens. The kernel reads encoder positions
            # m < enc_lengths[b] that are not masked, so end each row's region just after its
            # enc_length-th real token (any padding before it is masked out).
            enc_x = x
            real_so_far = inputs.mask.long().cumsum(1)
            wanted = inputs.mask.sum(1).clamp(max=self.enc_length)
            enc_lengths = (real_so_far <= wanted[:, None]).sum(1)
            mask = inputs.mask
        if inputs.fast and isinstance(enc_lengths, int) and enc_lengths < l:
            # Only the encoder positions are read: project those, zeros elsewhere (on a long
            # prompt this saves most of two projections' work).
            e = enc_lengths
            k_enc = F.pad(self.proj_k_enc(enc_x[:, :e]), (0, 0, 0, l - e))
            v_enc = F.pad(self.proj_v_enc(enc_x[:, :e]), (0, 0, 0, l - e))
            k_enc = k_enc.view(b, l, self.num_heads, self.feature_dim)
            v_enc = v_enc.view(b, l, self.num_heads, self.head_dim)
        else:
            k_enc = self.proj_k_enc(enc_x).view(b, l, self.num_heads, self.feature_dim)
            v_enc = self.proj_v_enc(enc_x).view(b, l, self.num_heads, self.head_dim)
        if inputs.reference and inputs.harness_pad_mask is not None and 1 < l <= self.enc_length:
            keep = inputs.harness_pad_mask[:, :, None, None].to(k.dtype)
            k = k * keep
            k_enc = k_enc * keep
        with _kernel_precision(x):
            o, state = prefix_linear_attention(
                q,
                k,
                v,
                k_enc,
                v_enc,
                enc_lengths=enc_lengths,
                mask=mask,
                eps=self.eps,
                output_final_state=use_cache,
            )
        if state is not None and inputs.reference:
            _round_state_to_bf16(state)
        return self.out_proj(o.reshape(b, l, -1)), state

    def step(self, x: torch.Tensor, inputs: MixerInputs, state: LinearAttentionState):
        # Generated tokens update only the causal part of the summed state (no encoder keys).
        b = x.shape[0]
        q, k, v = self._qkv(x)
        with _kernel_precision(x):
            o = linear_attention_step(q[:, 0], k[:, 0], v[:, 0], state, eps=self.eps)
        if inputs.reference:
            _round_state_to_bf16(state)
        return self.out_proj(o.reshape(b, 1, -1))


class SoftmaxAttention(nn.Module):
    """Causal multi-head attention with partial rotary; ``window`` limits each query to itself
    and the ``window`` tokens before it (sliding-window layers), None means full attention."""

    def __init__(self, config: JRTConfig, layer_idx: int, window: int | None):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.attention_heads
        self.head_dim = d // config.attention_heads
        self.window = window
        self.rotary_dim = int(config.rotary_emb_fraction * self.head_dim)
        self.rotary_base = config.rotary_emb_base
        self.Wqkv = Linear(d, 3 * d, bias=False)
        self.out_proj = Linear(d, d, bias=False)

    def _qkv(self, x: torch.Tensor, positions: torch.Tensor):
        b, l, _ = x.shape
        q, k, v = self.Wqkv(x).view(b, l, 3, self.num_heads, self.head_dim).unbind(2)
        q = apply_rotary(q, positions, self.rotary_dim, self.rotary_base)
        k = apply_rotary(k, positions, self.rotary_dim, self.rotary_base)
        return q, k, v

    def _attend(self, q, k, v, allowed):
        # q [b, lq, h, hd], k/v [b, lk, h, hd], allowed [b, lq, lk] bool
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=allowed[:, None],
            scale=self.head_dim**-0.5,
        )
        return o.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)

    def _qkv_fast(self, x: torch.Tensor, inputs: MixerInputs):
        b, l, _ = x.shape
        qkv = self.Wqkv(x).view(b, l, 3, self.num_heads, self.head_dim)
        if self.rotary_dim <= 0:
            return qkv.unbind(2)
        cos, sin = inputs.rotary_tables(self.rotary_dim, self.rotary_base)
        return fused.run(fused.rotary_qkv, qkv, cos, sin, compile=inputs.settings.compile)

    def _attend_window(self, q, k, v, inputs: MixerInputs):
        """Sliding-window attention of a whole prompt, never an l × l mask."""
        l = q.shape[1]
        valid = None if inputs.reference else inputs.mask
        scale = self.head_dim**-0.5
        if valid is None and l <= self.window + 1:
            # A prompt within the window: the window is all of the causal past.
            return F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, scale=scale
            ).transpose(1, 2)
        # flex_attention has no backward on CPU: training there takes the blocked path.
        if inputs.settings.swa == "flex" and (q.device.type == "cuda" or not q.requires_grad):
            key = ("flex", l, self.window)
            if key not in inputs.shared:
                inputs.shared[key] = flex_window_mask(l, self.window, valid, device=q.device)
            return sliding_window_attention_flex(
                q, k, v, self.window, valid, scale=scale, block_mask=inputs.shared[key]
            )
        block = block_size_for(self.window)
        key = ("blocks", l, self.window, block, q.dtype)
        if key not in inputs.shared:
            inputs.shared[key] = window_block_mask(
                l, self.window, block, valid, device=q.device, dtype=q.dtype
            )
        return sliding_window_attention_blocks(
            q, k, v, self.window, valid, scale=scale, block=block, mask=inputs.shared[key]
        )

    def forward(self, x: torch.Tensor, inputs: MixerInputs, use_cache: bool):
        if not inputs.fast:
            return self._forward_legacy(x, inputs, use_cache)
        b, l, _ = x.shape
        q, k, v = self._qkv_fast(x, inputs)
        valid = inputs.mask if inputs.mask is not None and not inputs.reference else None
        if self.window is not None:
            o = self._attend_window(q, k, v, inputs)
        elif valid is None:
            o = F.scaled_dot_product_attention(
                q.transpose(1, 2),
                k.transpose(1, 2),
                v.transpose(1, 2),
                is_causal=True,
                scale=self.head_dim**-0.5,
            ).transpose(1, 2)
        else:
            o = sliding_window_attention_masked(q, k, v, None, valid, scale=self.head_dim**-0.5)
        y = self.out_proj(o.reshape(b, l, -1))
        state = None
        if use_cache:
            if valid is None:
                valid = torch.ones(b, l, dtype=torch.bool, device=x.device)
            if self.window is None:
                state = {"k": k.contiguous(), "v": v.contiguous(), "valid": valid.contiguous()}
            else:
                state = self._window_ring(k, v, valid)
        return y, state

    def _window_ring(self, k, v, valid) -> dict:
        """The decode state of a sliding-window layer: a ring of ``window + 1`` slots, updated in
        place (fixed shapes, no copies per step). Slots 0.. hold the last min(l, window) keys in
        order; ``slot`` [b] is the next slot to overwrite (the oldest, or the first empty one). A
        step writes its own key there first and attends over the whole ring, so it sees itself and
        the ``window`` keys before it without concatenating a new key to the window. Rotary is
        applied before keys are stored, so the order of the slots does not matter."""
        b, l, h, hd = k.shape
        keep = min(l, self.window)
        slots = self.window + 1
        ring = {
            "k": k.new_zeros(b, slots, h, hd),
            "v": v.new_zeros(b, slots, h, hd),
            "valid": torch.zeros(b, slots, dtype=torch.bool, device=k.device),
            "slot": torch.full((b,), keep, dtype=torch.long, device=k.device),
        }
        if keep:
            ring["k"][:, :keep] = k[:, l - keep :]
            ring["v"][:, :keep] = v[:, l - keep :]
            ring["valid"][:, :keep] = valid[:, l - keep :]
        return ring

    def _forward_legacy(self, x: torch.Tensor, inputs: MixerInputs, use_cache: bool):
        b, l, _ = x.shape
        q, k, v = self._qkv(x, inputs.positions)
        idx = torch.arange(l, device=x.device)
        allowed = idx[None, :] <= idx[:, None]
        if self.window is not None:
            allowed = allowed & (idx[:, None] - idx[None, :] <= self.window)
        allowed = allowed[None].expand(b, l, l)
        valid = torch.ones(b, l, dtype=torch.bool, device=x.device)
        if inputs.mask is not None and not inputs.reference:
            valid = inputs.mask
            # A padded query still sees itself, so no row of the softmax is empty.
            allowed = allowed & (valid[:, None, :] | torch.eye(l, dtype=torch.bool, device=x.device))
        y = self.out_proj(self._attend(q, k, v, allowed))
        state = None
        if use_cache:
            keep = l if self.window is None else min(l, self.window)
            state = {
                "k": k[:, l - keep :].contiguous(),
                "v": v[:, l - keep :].contiguous(),
                "valid": valid[:, l - keep :].contiguous(),
            }
        return y, state

    def step(self, x: torch.Tensor, inputs: MixerInputs, state: dict):
        # The state's layout (set at prefill) decides: a ring (fast prefill of a window layer)
        # or a list of the last keys (legacy prefill, full attention).
        if "slot" in state:
            return self._step_ring(x, inputs, state)
        if inputs.fast:
            return self._step_fast(x, inputs, state)
        q, k, v = self._qkv(x, inputs.positions)
        valid_now = (
            inputs.mask
            if inputs.mask is not None and not inputs.reference
            else torch.ones(x.shape[0], 1, dtype=torch.bool, device=x.device)
        )
        keys = torch.cat([state["k"], k], dim=1)
        values = torch.cat([state["v"], v], dim=1)
        valid = torch.cat([state["valid"], valid_now], dim=1)
        allowed = valid.clone()
        allowed[:, -1] = True
        y = self.out_proj(self._attend(q, keys, values, allowed[:, None, :]))
        if self.window is not None and keys.shape[1] > self.window:
            keys, values, valid = keys[:, -self.window :], values[:, -self.window :], valid[:, -self.window :]
        state["k"], state["v"], state["valid"] = keys.contiguous(), values.contiguous(), valid.contiguous()
        return y

    def _step_ring(self, x: torch.Tensor, inputs: MixerInputs, state: dict):
        b = x.shape[0]
        q, k, v = self._qkv_fast(x, inputs) if inputs.fast else self._qkv(x, inputs.positions)
        rows = torch.arange(b, device=x.device)
        slot = state["slot"]
        # The new key replaces the one that leaves the window; the new token always sees itself,
        # whether later tokens see it depends on its mask.
        state["k"][rows, slot] = k[:, 0]
        state["v"][rows, slot] = v[:, 0]
        # scatter_ with a scalar: no host-to-device copy (a CUDA graph captures this step)
        allowed = state["valid"].clone().scatter_(1, slot[:, None], True)
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            state["k"].transpose(1, 2),
            state["v"].transpose(1, 2),
            attn_mask=allowed[:, None, None, :],
            scale=self.head_dim**-0.5,
        )
        if inputs.mask is None or inputs.reference:
            state["valid"].scatter_(1, slot[:, None], True)
        else:
            state["valid"][rows, slot] = inputs.mask[:, 0].to(torch.bool)
        slot.add_(1).remainder_(state["k"].shape[1])
        return self.out_proj(o.transpose(1, 2).reshape(b, 1, -1))

    def _step_fast(self, x: torch.Tensor, inputs: MixerInputs, state: dict):
        b = x.shape[0]
        q, k, v = self._qkv_fast(x, inputs)
        keys = torch.cat([state["k"], k], dim=1)
        values = torch.cat([state["v"], v], dim=1)
        # The new token always sees itself; whether later tokens see it depends on its mask.
        allowed = torch.cat([state["valid"], torch.ones(b, 1, dtype=torch.bool, device=x.device)], dim=1)
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            keys.transpose(1, 2),
            values.transpose(1, 2),
            attn_mask=allowed[:, None, None, :],
            scale=self.head_dim**-0.5,
        )
        y = self.out_proj(o.transpose(1, 2).reshape(b, 1, -1))
        valid = allowed
        if inputs.mask is not None and not inputs.reference:
            valid = torch.cat([state["valid"], inputs.mask.to(torch.bool)], dim=1)
        # Views of this step's concatenation (the next step copies them into its own).
        start = 0 if self.window is None or keys.shape[1] <= self.window else keys.shape[1] - self.window
        state["k"], state["v"], state["valid"] = keys[:, start:], values[:, start:], valid[:, start:]
        return y


def build_mixer(config: JRTConfig, kind: str, layer_idx: int) -> nn.Module:
    if kind == "base_conv":
        return BaseConv(config, layer_idx)
    if kind == "based":
        return BasedLinearAttention(config, layer_idx)
    if kind == "prefix_linear":
        return PrefixLinearAttention(config, layer_idx)
    if kind == "sliding_window":
        return SoftmaxAttention(config, layer_idx, window=config.sliding_window)
    if kind == "attention":
        return SoftmaxAttention(config, layer_idx, window=None)
    raise JRTError(f"unknown mixer {kind!r}; use one of {list(MIXER_KINDS)}")


class JRTBlock(nn.Module):
    """Pre-norm block: mixer(norm1(residual)), then SwiGLU(norm2(residual))."""

    def __init__(self, config: JRTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.mixer_kind = config.layer_mixers[layer_idx]
        self.norm1 = JRTRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mixer = build_mixer(config, self.mixer_kind, layer_idx)
        self.norm2 = JRTRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config)

    def forward(
        self,
        residual,
        delta,
        inputs: MixerInputs,
        cache: JRTCache | None,
        decoding: bool,
        use_cache: bool,
    ):
        """residual: the stream so far; delta: the previous block's MLP output, not yet added
        (None before the first block), so that the add and the norm run as one pass.
        Returns the stream and this block's MLP output (again not yet added)."""
        residual, normed = self.norm1.add_and_norm(residual, delta, inputs.settings)
        if decoding:
            mixed = self.mixer.step(normed, inputs, cache.layers[self.layer_idx])
        else:
            mixed, state = self.mixer(normed, inputs, use_cache)
            if use_cache:
                cache.layers[self.layer_idx] = state
        residual, normed = self.norm2.add_and_norm(residual, mixed, inputs.settings)
        return residual, self.mlp(normed, inputs.settings)


class JRTEmbeddings(nn.Module):
    """Word embeddings only: the released models have no positional embedding."""

    def __init__(self, config: JRTConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.word_embeddings(input_ids)


class JRTPreTrainedModel(PreTrainedModel):
    config_class = JRTConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["JRTBlock"]
    _is_stateful = True
    supports_gradient_checkpointing = False


class JRTModel(JRTPreTrainedModel):
    def __init__(self, config: JRTConfig):
        super().__init__(config)
        self.embeddings = JRTEmbeddings(config)
        self.layers = nn.ModuleList(JRTBlock(config, i) for i in range(config.num_hidden_layers))
        self.ln_f = JRTRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: JRTCache | None = None,
        use_cache: bool = False,
        harness_pad_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, JRTCache | None]:
        b, l = input_ids.shape
        reference = self.config.inference_mode == "reference"
        cache = past_key_values
        if cache is not None and not isinstance(cache, JRTCache):
            # generate() of some transformers versions hands every model an empty DynamicCache.
            if cache.get_seq_length() > 0:
                raise JRTError(
                    "JRTForCausalLM continues only from its own JRTCache, not from a transformers Cache"
                )
            cache = None
        if use_cache and cache is None:
            cache = JRTCache(self.config.num_hidden_layers)
        prefilled = cache is not None and cache.seen_tokens > 0

        settings = fused.stack_settings()
        fast = settings.fast
        mask = None
        if attention_mask is not None:
            mask = attention_mask[:, -l:].to(torch.bool)
            # Skipping the masks when nothing is padded costs a host sync: worth it once per
            # prompt, not per decoded token (a decode step reads its token's mask as a tensor).
            if not (prefilled and fast) and mask.all():
                mask = None

        if not prefilled:
            if reference:
                positions = torch.arange(l, device=input_ids.device)[None].expand(b, l)
            elif mask is not None:
                positions = (mask.long().cumsum(1) - 1).clamp(min=0)
            else:
                positions = torch.arange(l, device=input_ids.device)[None].expand(b, l)
            inputs = MixerInputs(mask, positions, reference, harness_pad_mask, settings=settings)
            hidden = self._run_layers(input_ids, inputs, cache, decoding=False, use_cache=use_cache)
            if cache is not None:
                cache.seen_tokens = l
                cache.next_positions = positions[:, -1] + 1 if mask is None else mask.sum(1).long()
                if reference:
                    cache.next_positions = torch.full((b,), l, device=input_ids.device, dtype=torch.long)
            return hidden, cache

        # Continuation after prefill: one token at a time through the recurrent path, so that
        # later tokens never touch the encoder part of prefix linear attention.
        outputs = []
        for t in range(l):
            token_mask = None if mask is None else mask[:, t : t + 1]
            positions = cache.next_positions[:, None]
            inputs = MixerInputs(token_mask, positions, reference, settings=settings)
            outputs.append(
                self._run_layers(input_ids[:, t : t + 1], inputs, cache, decoding=True, use_cache=True)
            )
            if token_mask is None:
                cache.next_positions = cache.next_positions + 1
            else:
                cache.next_positions = cache.next_positions + token_mask[:, 0].long()
            cache.seen_tokens += 1
        return (outputs[0] if l == 1 else torch.cat(outputs, dim=1)), cache

    def _run_layers(self, input_ids, inputs: MixerInputs, cache, decoding: bool, use_cache: bool):
        hidden = self.embeddings(input_ids)
        residual_dtype = torch.float32 if self.config.residual_in_fp32 else hidden.dtype
        residual = hidden.to(residual_dtype)
        delta = None
        for layer in self.layers:
            residual, delta = layer(residual, delta, inputs, cache, decoding, use_cache)
        return self.ln_f.add_and_norm(residual, delta, inputs.settings)[1]


class JRTForCausalLM(JRTPreTrainedModel, GenerationMixin):
    """The hybrid stack with a tied LM head over the padded vocabulary."""

    _tied_weights_keys = {"lm_head.weight": "transformer.embeddings.word_embeddings.weight"}

    def __init__(self, config: JRTConfig):
        super().__init__(config)
        self.transformer = JRTModel(config)
        self.lm_head = Linear(config.hidden_size, config.padded_vocab_size, bias=False)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # The model keeps its own recurrent state (JRTCache), created at prefill.
        return False

    def get_input_embeddings(self):
        return self.transformer.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.transformer.embeddings.word_embeddings = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def set_inference_mode(self, mode: str) -> JRTForCausalLM:
        """Switch between the ``"default"`` and the ``"reference"`` numerics (see module docstring)."""
        if mode not in INFERENCE_MODES:
            raise JRTError(f"inference mode {mode!r} is not one of {list(INFERENCE_MODES)}")
        self.config.inference_mode = mode
        return self

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        past_key_values: JRTCache | None = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool = True,
        **kwargs,
    ) -> dict[str, Any]:
        if past_key_values is None:  # transformers >= 5.2x hands the cache over as ``cache``
            past_key_values = kwargs.get("cache")
        if isinstance(past_key_values, JRTCache) and past_key_values.seen_tokens > 0:
            input_ids = input_ids[:, past_key_values.seen_tokens :]
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "past_key_values": past_key_values,
            "use_cache": use_cache,
        }
        if "logits_to_keep" in kwargs:
            inputs["logits_to_keep"] = kwargs["logits_to_keep"]
        return inputs

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: JRTCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        harness_pad_mask: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits over the padded vocabulary (fp32).

        labels: [b, l] token ids (-100 = ignored); the loss is next-token cross-entropy (labels
        are shifted inside). use_cache: return a :class:`JRTCache` to continue from.
        logits_to_keep: compute logits for the last n positions only (0 = all).
        """
        if past_key_values is None:
            past_key_values = kwargs.pop("cache", None)
        if use_cache is None:
            use_cache = past_key_values is not None
        hidden, cache = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
            harness_pad_mask=harness_pad_mask,
        )
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden.to(self.lm_head.weight.dtype)).float()
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1).to(logits.device),
                ignore_index=-100,
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: cache if use_cache else None})


# The output's cache field: ``cache`` in newer transformers (``past_key_values`` there is a deprecated
# alias that warns), ``past_key_values`` before.
_CACHE_FIELD = "cache" if "cache" in getattr(CausalLMOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"


def output_cache(output: Any) -> Any:
    """The cache of a model output under either field name, without the deprecation warning."""
    return getattr(output, _CACHE_FIELD, None)


AutoConfig.register(JRTConfig.model_type, JRTConfig, exist_ok=True)
AutoModelForCausalLM.register(JRTConfig, JRTForCausalLM, exist_ok=True)
