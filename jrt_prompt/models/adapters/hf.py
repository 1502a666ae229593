"""Any other causal LM that transformers can build from its config (``AutoModelForCausalLM``).

``trust_remote_code`` stays off: a checkpoint whose architecture needs code from its own repo is
refused with a message, never executed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...errors import UnsupportedModelError
from ..checkpoint import from_pretrained_checked
from .base import Adapter


def detect(config: dict[str, Any], files: set[str]) -> bool:
    return "model_type" in config


def load(path: Path, config: dict[str, Any], device: torch.device, dtype: torch.dtype | None):
    from transformers import AutoModelForCausalLM

    if config.get("auto_map") and config.get("model_type") not in _known_model_types():
        raise UnsupportedModelError(
            f"{path} needs custom code from its repository (auto_map), which is never run by default; "
            "use a model type that transformers ships"
        )
    model = from_pretrained_checked(
        AutoModelForCausalLM, path, dtype=dtype or torch.float32, trust_remote_code=False
    )
    return model.to(device).eval()


def _known_model_types() -> set[str]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return set(CONFIG_MAPPING_NAMES)


def state_bytes(config: dict[str, Any], prompt_tokens: int, dtype_bytes: int = 2) -> int:
    """KV cache of a standard Transformer: 2 x layers x kv heads x head dim per token."""
    d = int(config.get("hidden_size", config.get("n_embd", 0)))
    layers = int(config.get("num_hidden_layers", config.get("n_layer", 0)))
    heads = int(config.get("num_attention_heads", config.get("n_head", 1)) or 1)
    kv_heads = int(config.get("num_key_value_heads", heads) or heads)
    head_dim = int(config.get("head_dim", d // heads) or d // heads)
    return 2 * layers * kv_heads * head_dim * prompt_tokens * dtype_bytes


ADAPTER = Adapter(
    name="hf",
    family="transformers",
    detect=detect,
    load=load,
    state_bytes=state_bytes,
    supports_left_padding=True,
)
