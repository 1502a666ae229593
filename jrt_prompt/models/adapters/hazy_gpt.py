"""Based (hazyresearch/based-*) and other GPT-style hybrids of the JRT paper, as JRTForCausalLM.

Also accepts this project's own ``jrt_hybrid`` checkpoints (``JRTForCausalLM.save_pretrained``).
JRT-RNN checkpoints have their own adapter (``hazy_jrt``) because they read the prompt twice by
architecture; this one accepts them too when a directory is loaded without a roster entry.
"""

from __future__ import annotations

from typing import Any

from ..hazy_checkpoints import hybrid_state_bytes, is_gpt_hybrid_config, load_gpt_hybrid
from .base import Adapter


def detect(config: dict[str, Any], files: set[str]) -> bool:
    return is_gpt_hybrid_config(config) or config.get("model_type") == "jrt_hybrid"


ADAPTER = Adapter(
    name="hazy_gpt",
    family="based",
    detect=detect,
    load=load_gpt_hybrid,
    state_bytes=hybrid_state_bytes,
    supports_left_padding=True,
    reads_prompt_twice=False,
    default_tokenizer="gpt2",
    notes="Based: BaseConv + Taylor linear attention + sliding-window attention (hazyresearch/based-*)",
)
