"""Small models trained from scratch on the synthetic tasks, and the size of what they remember.

Families (all real model classes, saved with ``save_pretrained`` so ``load_model`` reads them):

- ``mamba2``: transformers ``Mamba2ForCausalLM`` (its PyTorch path runs without mamba-ssm);
  state size knob: ``state_size`` (N).
- ``gla``: fla's ``GLAForCausalLM`` (CUDA only); knob: ``expand_k`` (key width per head).
- ``based``: this project's :class:`JRTForCausalLM` with BaseConv + Based linear attention layers;
  knob: ``feature_dim`` (f; the Taylor map expands it to 1 + f + f²).
- ``jrt_rnn``: the same stack with prefix linear attention instead of Based (JRT-RNN).
- ``attention``: transformers ``LlamaForCausalLM`` (softmax attention, the ceiling).
- ``conv_attention``: the Based stack with softmax attention in place of linear attention (the
  same short convolutions and MLPs: the ceiling that differs from Based/JRT-RNN only in the mixer).

``state_floats`` counts the numbers one sequence keeps between tokens at inference (all layers):
the recurrent state for the recurrent families, the KV cache at a given length for attention.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..errors import JRTError

FAMILIES = ("mamba2", "gla", "based", "jrt_rnn", "attention", "conv_attention")


@dataclass
class ModelSpec:
    """What to build: a family, shared sizes, and the family's state-size knob in ``options``."""

    family: str
    hidden_size: int = 128
    num_layers: int = 2
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def label(self) -> str:
        knob = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.family}[{knob}]" if knob else self.family


def build_model(spec: ModelSpec, vocab_size: int, pad_id: int) -> torch.nn.Module:
    if spec.family not in FAMILIES:
        raise JRTError(f"model family {spec.family!r} is unknown: use one of {', '.join(FAMILIES)}")
    return _BUILDERS[spec.family](spec, vocab_size, pad_id)


def _mamba2(spec: ModelSpec, vocab_size: int, pad_id: int):
    from transformers import Mamba2Config, Mamba2ForCausalLM

    o = spec.options
    expand = o.get("expand", 2)
    head_dim = o.get("head_dim", 32)
    inner = expand * spec.hidden_size
    if inner % head_dim:
        raise JRTError(f"mamba2: expand*hidden_size={inner} is not divisible by head_dim={head_dim}")
    config = Mamba2Config(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        state_size=o.get("state_size", 16),
        num_heads=inner // head_dim,
        head_dim=head_dim,
        expand=expand,
        n_groups=1,
        conv_kernel=4,
        chunk_size=o.get("chunk_size", 64),
        pad_token_id=pad_id,
        bos_token_id=None,
        eos_token_id=o.get("eos_token_id"),
        tie_word_embeddings=True,
        initializer_range=0.02,
        residual_in_fp32=True,
        use_cache=True,
    )
    return Mamba2ForCausalLM(config)


def _gla(spec: ModelSpec, vocab_size: int, pad_id: int):
    from fla.models import GLAConfig, GLAForCausalLM

    o = spec.options
    config = GLAConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_heads=o.get("num_heads", 2),
        expand_k=o.get("expand_k", 0.5),
        expand_v=o.get("expand_v", 1.0),
        hidden_ratio=4,
        use_short_conv=True,
        conv_size=4,
        attn_mode="chunk",
        fuse_cross_entropy=False,
        pad_token_id=pad_id,
        tie_word_embeddings=True,
    )
    return GLAForCausalLM(config)


def _jrt_stack(spec: ModelSpec, vocab_size: int, pad_id: int, linear: str):
    from ..models.modeling_jrt import JRTConfig, JRTForCausalLM

    o = spec.options
    # Each of the ``num_layers`` blocks is a short-conv layer followed by a linear-attention layer.
    mixers = ["base_conv", linear] * spec.num_layers
    config = JRTConfig(
        vocab_size=vocab_size,
        pad_vocab_size_multiple=8,
        hidden_size=spec.hidden_size,
        num_hidden_layers=len(mixers),
        layer_mixers=mixers,
        num_heads=o.get("num_heads", 2),
        feature_dim=o.get("feature_dim", 8),
        enc_length=o.get("enc_length", 1024),
        attention_heads=o.get("num_heads", 2),
        conv_kernel_size=3,
        conv_expand=2,
        pad_token_id=pad_id,
        eos_token_id=o.get("eos_token_id"),
    )
    return JRTForCausalLM(config)


def _attention(spec: ModelSpec, vocab_size: int, pad_id: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    o = spec.options
    heads = o.get("num_heads", 2)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=2 * spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=o.get("max_positions", 4096),
        rope_theta=10000.0,
        pad_token_id=pad_id,
        bos_token_id=None,
        eos_token_id=o.get("eos_token_id"),
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


_BUILDERS = {
    "mamba2": _mamba2,
    "gla": _gla,
    "based": lambda s, v, p: _jrt_stack(s, v, p, "based"),
    "jrt_rnn": lambda s, v, p: _jrt_stack(s, v, p, "prefix_linear"),
    "attention": _attention,
    "conv_attention": lambda s, v, p: _jrt_stack(s, v, p, "attention"),
}


def state_floats(model: torch.nn.Module, seq_len: int) -> int:
    """Numbers one sequence keeps between tokens after ``seq_len`` tokens (all layers)."""
    c = model.config
    kind = type(model).__name__
    if kind == "Mamba2ForCausalLM":
        inner = c.expand * c.hidden_size
        ssm = c.num_heads * c.head_dim * c.state_size
        conv = (inner + 2 * c.n_groups * c.state_size) * (c.conv_kernel - 1)
        return c.num_hidden_layers * (ssm + conv)
    if kind == "GLAForCausalLM":
        key = int(c.hidden_size * c.expand_k)
        value = int(c.hidden_size * c.expand_v)
        per_head = (key // c.num_heads) * (value // c.num_heads)
        conv = (2 * key + value) * (c.conv_size - 1) if c.use_short_conv else 0
        return c.num_hidden_layers * (c.num_heads * per_head + conv)
    if kind == "JRTForCausalLM":
        total = 0
        head_dim = c.hidden_size // c.num_heads
        features = 1 + c.feature_dim + c.feature_dim**2
        for mixer in c.layer_mixers:
            if mixer in ("based", "prefix_linear"):
                total += c.num_heads * features * (head_dim + 1)  # Σφ(k)⊗v and Σφ(k)
            elif mixer == "base_conv":
                total += c.conv_expand * c.hidden_size // 2 * (c.conv_kernel_size - 1)
            elif mixer == "sliding_window":
                total += 2 * min(seq_len, c.sliding_window + 1) * c.hidden_size
            else:
                total += 2 * seq_len * c.hidden_size
        return total
    if kind == "LlamaForCausalLM":
        kv_dim = c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
        return c.num_hidden_layers * 2 * seq_len * kv_dim
    raise JRTError(f"state size of {kind} is not known")


def count_parameters(model: torch.nn.Module) -> int:
    seen = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def set_encoder_length(model: torch.nn.Module, length: int) -> bool:
    """JRT-RNN: read the first ``length`` tokens (the prompt before the answers) non-causally.

    Returns whether the model has prefix linear attention at all. The encoder must stop before the
    first teacher-forced answer, otherwise the non-causal read would see the answers.
    """
    from ..models.modeling_jrt import PrefixLinearAttention

    found = False
    for module in model.modules():
        if isinstance(module, PrefixLinearAttention):
            module.enc_length = int(length)
            found = True
    if found:
        model.config.enc_length = int(length)
    return found
