"""JRT-RNN (hazyresearch/JRT-*): prefix linear attention reads the prompt a second time by
itself, so prompts are not repeated by default."""

from __future__ import annotations

from typing import Any

from ..hazy_checkpoints import hybrid_state_bytes, is_gpt_hybrid_config, jrt_config_from_hazy, load_gpt_hybrid
from .base import Adapter


def detect(config: dict[str, Any], files: set[str]) -> bool:
    if not (is_gpt_hybrid_config(config) or config.get("model_type") == "jrt_hybrid"):
        return False
    try:
        return "prefix_linear" in jrt_config_from_hazy(config).layer_mixers
    except Exception:
        return False


ADAPTER = Adapter(
    name="hazy_jrt",
    family="jrt-rnn",
    detect=detect,
    load=load_gpt_hybrid,
    state_bytes=hybrid_state_bytes,
    supports_left_padding=True,
    reads_prompt_twice=True,
    default_tokenizer="gpt2",
    notes="JRT-RNN: prefix linear attention over the first enc_length prompt tokens (hazyresearch/JRT-*)",
)
