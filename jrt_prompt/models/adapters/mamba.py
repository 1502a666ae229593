"""Mamba (selective SSM) through transformers' ``MambaForCausalLM``.

Two on-disk formats load:
- transformers' own (the ``-hf`` repos): ``config.json`` with ``model_type: mamba``;
- mamba_ssm's original (state-spaces/mamba-*, hazyresearch/mamba-*): ``config.json`` with
  ``d_model``/``n_layer``/``ssm_cfg`` and ``pytorch_model.bin`` with ``backbone.embedding.*`` keys,
  converted here by key mapping, so mamba-ssm is not needed. On a GPU, transformers picks up the
  mamba-ssm / causal-conv1d kernels by itself when they are installed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ...errors import JRTError
from ..checkpoint import check_shape, from_pretrained_checked, read_state_dict
from .base import Adapter

# The mixer layer class of mamba_ssm's original configs (ssm_cfg.layer); absent means Mamba-1.
_MAMBA1_LAYERS = (None, "Mamba1", "Mamba")


def is_original_format(config: dict[str, Any]) -> bool:
    return "d_model" in config and "n_layer" in config and "model_type" not in config


def detect(config: dict[str, Any], files: set[str]) -> bool:
    if config.get("model_type") == "mamba":
        return True
    return is_original_format(config) and (config.get("ssm_cfg") or {}).get("layer") in _MAMBA1_LAYERS


def convert_mamba_ssm_state_dict(state_dict: dict[str, torch.Tensor], config: dict[str, Any]):
    """Map an original mamba_ssm Mamba-1 checkpoint onto transformers' ``MambaForCausalLM``.

    Returns ``(MambaConfig, state_dict)``. Every size is read from the tensors and checked against
    config.json, so a checkpoint that does not match its config fails with the key named.
    """
    from transformers import MambaConfig

    state = {k.removeprefix("model."): v for k, v in state_dict.items() if "metrics" not in k}
    d_model = int(config["d_model"])
    n_layer = int(config["n_layer"])
    ssm_cfg = dict(config.get("ssm_cfg") or {})
    if "backbone.embedding.weight" not in state:
        raise JRTError(
            "checkpoint has no backbone.embedding.weight: it is not an original mamba_ssm checkpoint"
        )
    embedding = state["backbone.embedding.weight"]
    vocab_padded, width = embedding.shape
    if width != d_model:
        check_shape("backbone.embedding.weight", embedding, (vocab_padded, d_model))
    vocab = int(config.get("vocab_size", vocab_padded))
    multiple = int(config.get("pad_vocab_size_multiple", 1) or 1)
    expected_vocab = math.ceil(vocab / multiple) * multiple
    check_shape("backbone.embedding.weight", embedding, (expected_vocab, d_model))
    layers = {int(k.split(".")[2]) for k in state if k.startswith("backbone.layers.")}
    if layers != set(range(n_layer)):
        raise JRTError(
            f"checkpoint has layers {min(layers, default=-1)}..{max(layers, default=-1)} ({len(layers)}) "
            f"but config.json says n_layer={n_layer}"
        )
    first = "backbone.layers.0.mixer."
    d_inner = state[first + "in_proj.weight"].shape[0] // 2
    d_state = state[first + "A_log"].shape[1]
    d_conv = state[first + "conv1d.weight"].shape[-1]
    dt_rank = state[first + "dt_proj.weight"].shape[1]
    expand = d_inner // d_model
    if "d_state" in ssm_cfg and int(ssm_cfg["d_state"]) != d_state:
        check_shape(first + "A_log", state[first + "A_log"], (d_inner, int(ssm_cfg["d_state"])))
    if "expand" in ssm_cfg and int(ssm_cfg["expand"]) * d_model != d_inner:
        check_shape(
            first + "in_proj.weight",
            state[first + "in_proj.weight"],
            (2 * int(ssm_cfg["expand"]) * d_model, d_model),
        )
    hf_config = MambaConfig(
        vocab_size=int(vocab_padded),
        hidden_size=d_model,
        state_size=int(d_state),
        num_hidden_layers=n_layer,
        expand=int(expand),
        conv_kernel=int(d_conv),
        time_step_rank=int(dt_rank),
        use_bias=first + "in_proj.bias" in state,
        use_conv_bias=first + "conv1d.bias" in state,
        # mamba_ssm's RMSNorm eps is fixed at 1e-5 whatever config.json says.
        layer_norm_epsilon=1e-5,
        residual_in_fp32=bool(config.get("residual_in_fp32", True)),
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    for i in range(n_layer):
        p = f"backbone.layers.{i}.mixer."
        check_shape(p + "in_proj.weight", state[p + "in_proj.weight"], (2 * d_inner, d_model))
        check_shape(p + "x_proj.weight", state[p + "x_proj.weight"], (dt_rank + 2 * d_state, d_inner))
        check_shape(p + "out_proj.weight", state[p + "out_proj.weight"], (d_model, d_inner))
        check_shape(p + "A_log", state[p + "A_log"], (d_inner, d_state))
    converted = {}
    for key, value in state.items():
        if key == "backbone.embedding.weight":
            key = "backbone.embeddings.weight"
        converted[key] = value
    converted.setdefault("lm_head.weight", converted["backbone.embeddings.weight"])
    return hf_config, converted


def load(path: Path, config: dict[str, Any], device: torch.device, dtype: torch.dtype | None):
    from transformers import MambaForCausalLM

    if not is_original_format(config):
        model = from_pretrained_checked(MambaForCausalLM, path, dtype=dtype or torch.float32)
        return model.to(device).eval()
    hf_config, state = convert_mamba_ssm_state_dict(read_state_dict(path), config)
    return build_from_state_dict(MambaForCausalLM, hf_config, state, device, dtype)


def build_from_state_dict(model_cls, hf_config, state, device, dtype):
    """Instantiate ``model_cls`` without random init and load ``state`` strictly."""
    with torch.device("meta"):
        model = model_cls(hf_config)
    missing, unexpected = _strict_keys(model, state)
    if missing or unexpected:
        raise JRTError(
            f"converted checkpoint does not fit {model_cls.__name__}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    return model.to(device=device, dtype=dtype or torch.float32).eval()


def _strict_keys(model, state):
    expected = set(model.state_dict())
    tied = {"lm_head.weight"}
    missing = sorted(expected - set(state) - tied)
    unexpected = sorted(set(state) - expected)
    return missing, unexpected


def state_bytes(config: dict[str, Any], prompt_tokens: int, dtype_bytes: int = 2) -> int:
    """Conv state (d_inner x d_conv) plus SSM state (d_inner x d_state) per layer."""
    d = int(config.get("hidden_size", config.get("d_model", 0)))
    layers = int(config.get("num_hidden_layers", config.get("n_layer", 0)))
    d_inner = int(config.get("expand", 2)) * d
    d_state = int(config.get("state_size", (config.get("ssm_cfg") or {}).get("d_state", 16)))
    d_conv = int(config.get("conv_kernel", (config.get("ssm_cfg") or {}).get("d_conv", 4)))
    return layers * d_inner * (d_state + d_conv) * dtype_bytes


ADAPTER = Adapter(
    name="mamba",
    family="mamba",
    detect=detect,
    load=load,
    state_bytes=state_bytes,
    supports_left_padding=True,
    default_tokenizer="EleutherAI/gpt-neox-20b",
)
