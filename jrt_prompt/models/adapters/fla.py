"""Models of flash-linear-attention (fla): GLA, RWKV-6/7, GatedDeltaNet, DeltaNet, RetNet, HGRN2, ...

fla registers its config and model classes with transformers' Auto classes on import, so a
checkpoint saved by fla loads with ``AutoModelForCausalLM`` once ``fla`` is imported. Its layers
run Triton kernels written for CUDA: these models need a GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...errors import JRTError
from ..checkpoint import from_pretrained_checked
from .base import Adapter

# model_type values of fla's causal LMs (fla/models/*/configuration_*.py).
FLA_MODEL_TYPES = {
    "gla",
    "rwkv6",
    "rwkv7",
    "gated_deltanet",
    "delta_net",
    "retnet",
    "hgrn",
    "hgrn2",
    "gsa",
    "linear_attn",
    "based",
    "abc",
    "mamba2_fla",
    "lightnet",
    "nsa",
    "forgetting_transformer",
    "gated_deltaproduct",
    "path_attn",
    "mesa_net",
    "comba",
    "log_linear_mamba2",
    "mom",
    "kda",
}


def import_fla():
    try:
        import fla  # noqa: F401  (registers fla's classes with transformers' Auto classes)
    except ImportError:
        raise JRTError(
            "this model needs flash-linear-attention: install it with pip install 'jrt-prompt[gpu]'"
        ) from None


def detect(config: dict[str, Any], files: set[str]) -> bool:
    return config.get("model_type") in FLA_MODEL_TYPES


def load(path: Path, config: dict[str, Any], device: torch.device, dtype: torch.dtype | None):
    if device.type != "cuda":
        raise JRTError(
            f"{config.get('model_type')} models run flash-linear-attention's Triton kernels: they need a CUDA GPU "
            "(device='cuda') and fla (pip install 'jrt-prompt[gpu]')"
        )
    import_fla()
    from transformers import AutoModelForCausalLM

    model = from_pretrained_checked(
        AutoModelForCausalLM, path, dtype=dtype or torch.bfloat16, trust_remote_code=False
    )
    return model.to(device).eval()


def state_bytes(config: dict[str, Any], prompt_tokens: int, dtype_bytes: int = 2) -> int:
    """GLA-style matrix state: per layer, heads x (key dim / heads) x (value dim / heads)."""
    d = int(config["hidden_size"])
    layers = int(config["num_hidden_layers"])
    heads = int(config.get("num_heads", 4))
    key_dim = int(d * float(config.get("expand_k", 0.5)))
    value_dim = int(d * float(config.get("expand_v", 1)))
    return layers * heads * (key_dim // heads) * (value_dim // heads) * dtype_bytes


ADAPTER = Adapter(
    name="fla",
    family="fla",
    detect=detect,
    load=load,
    state_bytes=state_bytes,
    supports_left_padding=True,
    needs_gpu=True,
    notes="GPU only (fla Triton kernels)",
)
