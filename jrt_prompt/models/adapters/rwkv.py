"""RWKV-4 through transformers' ``RwkvForCausalLM`` (the RWKV/rwkv-4-*-pile checkpoints)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..checkpoint import from_pretrained_checked
from .base import Adapter


def detect(config: dict[str, Any], files: set[str]) -> bool:
    return config.get("model_type") == "rwkv"


def load(path: Path, config: dict[str, Any], device: torch.device, dtype: torch.dtype | None):
    from transformers import RwkvForCausalLM

    model = from_pretrained_checked(RwkvForCausalLM, path, dtype=dtype or torch.float32)
    return model.to(device).eval()


def state_bytes(config: dict[str, Any], prompt_tokens: int, dtype_bytes: int = 2) -> int:
    """Five vectors of hidden size per layer (time-mix x, a, b, p and channel-mix x)."""
    return 5 * int(config["hidden_size"]) * int(config["num_hidden_layers"]) * dtype_bytes


ADAPTER = Adapter(
    name="rwkv",
    family="rwkv",
    detect=detect,
    load=load,
    state_bytes=state_bytes,
    # transformers' RWKV ignores attention_mask: pad tokens would enter the state, so prompts of
    # different lengths are never batched together.
    supports_left_padding=False,
    default_tokenizer="RWKV/rwkv-4-169m-pile",
)
