"""Mamba-2 (SSD) through transformers' ``Mamba2ForCausalLM``.

Loads transformers' format (``model_type: mamba2``) and mamba_ssm's original one
(state-spaces/mamba2-*: ``ssm_cfg: {layer: Mamba2}``), converted by key mapping.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ...errors import JRTError
from ..checkpoint import check_shape, from_pretrained_checked, read_state_dict
from .base import Adapter
from .mamba import build_from_state_dict, is_original_format


def detect(config: dict[str, Any], files: set[str]) -> bool:
    if config.get("model_type") == "mamba2":
        return True
    return is_original_format(config) and (config.get("ssm_cfg") or {}).get("layer") == "Mamba2"


def convert_mamba2_ssm_state_dict(state_dict: dict[str, torch.Tensor], config: dict[str, Any]):
    """Map an original mamba_ssm Mamba-2 checkpoint onto ``Mamba2ForCausalLM``: ``(Mamba2Config, state)``."""
    from transformers import Mamba2Config

    state = {k.removeprefix("model."): v for k, v in state_dict.items() if "metrics" not in k}
    if config.get("attn_layer_idx"):
        raise JRTError(
            "this Mamba-2 checkpoint has attention layers (attn_layer_idx), which transformers' Mamba2 cannot hold"
        )
    if int(config.get("d_intermediate", 0) or 0) != 0:
        raise JRTError(
            "this Mamba-2 checkpoint has MLP blocks (d_intermediate > 0), which transformers' Mamba2 cannot hold"
        )
    ssm_cfg = dict(config.get("ssm_cfg") or {})
    d_model = int(config["d_model"])
    n_layer = int(config["n_layer"])
    if "backbone.embedding.weight" not in state:
        raise JRTError(
            "checkpoint has no backbone.embedding.weight: it is not an original mamba_ssm checkpoint"
        )
    embedding = state["backbone.embedding.weight"]
    vocab = int(config.get("vocab_size", embedding.shape[0]))
    multiple = int(config.get("pad_vocab_size_multiple", 1) or 1)
    check_shape("backbone.embedding.weight", embedding, (math.ceil(vocab / multiple) * multiple, d_model))
    layers = {int(k.split(".")[2]) for k in state if k.startswith("backbone.layers.")}
    if layers != set(range(n_layer)):
        raise JRTError(f"checkpoint has {len(layers)} layers but config.json says n_layer={n_layer}")
    first = "backbone.layers.0.mixer."
    n_heads = state[first + "A_log"].shape[0]
    d_inner = state[first + "out_proj.weight"].shape[1]
    n_groups = int(ssm_cfg.get("ngroups", 1))
    conv_dim, _, d_conv = state[first + "conv1d.weight"].shape
    d_state = (conv_dim - d_inner) // (2 * n_groups)
    head_dim = d_inner // n_heads
    if "d_state" in ssm_cfg and int(ssm_cfg["d_state"]) != d_state:
        check_shape(
            first + "conv1d.weight",
            state[first + "conv1d.weight"],
            (d_inner + 2 * n_groups * int(ssm_cfg["d_state"]), 1, d_conv),
        )
    if "headdim" in ssm_cfg and int(ssm_cfg["headdim"]) != head_dim:
        check_shape(first + "A_log", state[first + "A_log"], (d_inner // int(ssm_cfg["headdim"]),))
    in_proj = 2 * d_inner + 2 * n_groups * d_state + n_heads
    for i in range(n_layer):
        p = f"backbone.layers.{i}.mixer."
        check_shape(p + "in_proj.weight", state[p + "in_proj.weight"], (in_proj, d_model))
        check_shape(p + "out_proj.weight", state[p + "out_proj.weight"], (d_model, d_inner))
        check_shape(p + "norm.weight", state[p + "norm.weight"], (d_inner,))
    hf_config = Mamba2Config(
        num_heads=int(n_heads),
        head_dim=int(head_dim),
        vocab_size=int(embedding.shape[0]),
        hidden_size=d_model,
        state_size=int(d_state),
        num_hidden_layers=n_layer,
        layer_norm_epsilon=1e-5,
        expand=d_inner // d_model,
        conv_kernel=int(d_conv),
        n_groups=n_groups,
        use_bias=first + "in_proj.bias" in state,
        use_conv_bias=first + "conv1d.bias" in state,
        residual_in_fp32=bool(config.get("residual_in_fp32", True)),
        chunk_size=int(ssm_cfg.get("chunk_size", 256)),
        tie_word_embeddings=bool(config.get("tie_embeddings", True)),
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    converted = {}
    for key, value in state.items():
        converted["backbone.embeddings.weight" if key == "backbone.embedding.weight" else key] = value
    if hf_config.tie_word_embeddings:
        converted.setdefault("lm_head.weight", converted["backbone.embeddings.weight"])
    elif "lm_head.weight" not in converted:
        raise JRTError("checkpoint has untied embeddings (tie_embeddings=false) but no lm_head.weight")
    return hf_config, converted


def load(path: Path, config: dict[str, Any], device: torch.device, dtype: torch.dtype | None):
    from transformers import Mamba2ForCausalLM

    if not is_original_format(config):
        model = from_pretrained_checked(Mamba2ForCausalLM, path, dtype=dtype or torch.float32)
        return model.to(device).eval()
    hf_config, state = convert_mamba2_ssm_state_dict(read_state_dict(path), config)
    return build_from_state_dict(Mamba2ForCausalLM, hf_config, state, device, dtype)


def state_bytes(config: dict[str, Any], prompt_tokens: int, dtype_bytes: int = 2) -> int:
    """SSM state (heads x head_dim x d_state) plus conv state ((d_inner + 2 g N) x d_conv) per layer."""
    ssm_cfg = config.get("ssm_cfg") or {}
    d = int(config.get("hidden_size", config.get("d_model", 0)))
    layers = int(config.get("num_hidden_layers", config.get("n_layer", 0)))
    d_inner = int(config.get("expand", ssm_cfg.get("expand", 2))) * d
    d_state = int(config.get("state_size", ssm_cfg.get("d_state", 128)))
    groups = int(config.get("n_groups", ssm_cfg.get("ngroups", 1)))
    d_conv = int(config.get("conv_kernel", ssm_cfg.get("d_conv", 4)))
    return layers * (d_inner * d_state + (d_inner + 2 * groups * d_state) * d_conv) * dtype_bytes


ADAPTER = Adapter(
    name="mamba2",
    family="mamba2",
    detect=detect,
    load=load,
    state_bytes=state_bytes,
    supports_left_padding=True,
    default_tokenizer="EleutherAI/gpt-neox-20b",
)
