"""Mamba checkpoints of the JRT paper (hazyresearch/mamba-*): mamba_ssm's original layout saved
from a Lightning run (``model.`` prefix, metrics counters), into transformers' MambaForCausalLM."""

from __future__ import annotations

from typing import Any

from ..hazy_checkpoints import load_mamba
from .base import Adapter
from .mamba import is_original_format
from .mamba import state_bytes as mamba_state_bytes

# Fields of the hazyresearch MambaConfig that state-spaces configs do not have.
_HAZY_FIELDS = ("use_flash_attn", "fused_mlp", "fused_bias_fc", "fused_dropout_add_ln", "n_embd")


def detect(config: dict[str, Any], files: set[str]) -> bool:
    return is_original_format(config) and any(field in config for field in _HAZY_FIELDS)


ADAPTER = Adapter(
    name="hazy_mamba",
    family="mamba",
    detect=detect,
    load=load_mamba,
    state_bytes=mamba_state_bytes,
    supports_left_padding=True,
    default_tokenizer="gpt2",
    notes="Mamba trained by hazyresearch on the Pile with the GPT-2 tokenizer",
)
