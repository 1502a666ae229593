"""The attention baseline of the JRT paper (hazyresearch/attn-*): a GPT-style Transformer with
RMSNorm, SwiGLU and partial rotary, loaded as JRTForCausalLM with every layer "attention"."""

from __future__ import annotations

from typing import Any

from ..hazy_checkpoints import hybrid_state_bytes, is_hazy_attention_config, load_attention
from .base import Adapter


def detect(config: dict[str, Any], files: set[str]) -> bool:
    return is_hazy_attention_config(config)


ADAPTER = Adapter(
    name="hazy_attention",
    family="attention",
    detect=detect,
    load=load_attention,
    state_bytes=hybrid_state_bytes,
    supports_left_padding=True,
    default_tokenizer="gpt2",
    notes="Transformer baseline (full causal attention, rotary on half of each head)",
)
