"""Tiny random models written to disk in the real on-disk formats, for loading tests.

Weights are scaled up from transformers' small default init so that greedy decoding picks clear
winners (near-uniform logits would make batched-vs-single comparisons depend on rounding).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from jrt_prompt.tokenization import build_byte_tokenizer

VOCAB = 258  # byte tokenizer: 256 bytes + EOS + PAD
EOS, PAD = 256, 257


def _sharpen(model, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "conv" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / p.shape[-1] ** 0.5))


def _save_hf(model, path: Path, tokenizer=True) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    if tokenizer:
        build_byte_tokenizer().save_pretrained(path)
    return path


def tiny_mamba_model(seed: int = 0):
    from transformers import MambaConfig, MambaForCausalLM

    return _tiny(
        MambaConfig,
        MambaForCausalLM,
        seed,
        hidden_size=32,
        num_hidden_layers=2,
        state_size=8,
        expand=2,
        conv_kernel=4,
    )


def write_tiny_mamba(path: Path, seed: int = 0) -> Path:
    """transformers' Mamba format (like the state-spaces/mamba-*-hf repos), with a byte tokenizer."""
    return _save_hf(tiny_mamba_model(seed), Path(path))


def _tiny(config_cls, model_cls, seed: int, vocab_size: int = VOCAB, **fields):
    """A sharpened random model of ``model_cls`` with the byte tokenizer's special ids."""
    torch.manual_seed(seed)
    config = config_cls(vocab_size=vocab_size, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=EOS, **fields)
    model = model_cls(config).eval()
    _sharpen(model, seed)
    return model


def to_mamba_ssm_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' Mamba/Mamba-2 keys as mamba_ssm names them (embedding, tied head written out)."""
    out = {k.replace("backbone.embeddings.", "backbone.embedding."): v.clone() for k, v in state.items()}
    out["lm_head.weight"] = out["backbone.embedding.weight"]
    return out


def _save_mamba_ssm(path: Path, model, config: dict) -> Path:
    """Write ``model`` in mamba_ssm's original layout: config.json + pytorch_model.bin (+ tokenizer)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    torch.save(to_mamba_ssm_keys(model.state_dict()), path / "pytorch_model.bin")
    build_byte_tokenizer().save_pretrained(path)
    return path


def write_tiny_mamba_original(path: Path, seed: int = 0, vocab_size: int = 258, pad_multiple: int = 16):
    """mamba_ssm's original format (config d_model/n_layer + pytorch_model.bin with backbone.embedding).

    Returns (path, the transformers model holding the same weights). The vocabulary is padded to a
    multiple of ``pad_multiple`` as mamba_ssm does.
    """
    from transformers import MambaConfig, MambaForCausalLM

    padded = -(-vocab_size // pad_multiple) * pad_multiple
    model = _tiny(
        MambaConfig,
        MambaForCausalLM,
        seed,
        vocab_size=padded,
        hidden_size=32,
        num_hidden_layers=2,
        state_size=16,
        expand=2,
        conv_kernel=4,
        time_step_rank=2,
    )
    config = {
        "d_model": 32,
        "n_layer": 2,
        "vocab_size": vocab_size,
        "ssm_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": pad_multiple,
    }
    return _save_mamba_ssm(path, model, config), model


def write_tiny_mamba2_original(path: Path, seed: int = 0, vocab_size: int = 258):
    """mamba_ssm's original Mamba-2 format. Returns (path, the equivalent transformers model)."""
    from transformers import Mamba2Config, Mamba2ForCausalLM

    padded = -(-vocab_size // 16) * 16
    model = _tiny(
        Mamba2Config,
        Mamba2ForCausalLM,
        seed,
        vocab_size=padded,
        hidden_size=32,
        num_hidden_layers=2,
        state_size=16,
        num_heads=4,
        head_dim=16,
        n_groups=1,
        expand=2,
        conv_kernel=4,
        chunk_size=16,
        tie_word_embeddings=True,
    )
    config = {
        "d_model": 32,
        "d_intermediate": 0,
        "n_layer": 2,
        "vocab_size": vocab_size,
        "ssm_cfg": {"layer": "Mamba2", "d_state": 16, "headdim": 16, "chunk_size": 16},
        "attn_layer_idx": [],
        "attn_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 16,
        "tie_embeddings": True,
    }
    return _save_mamba_ssm(path, model, config), model


def tiny_mamba2_model(seed: int = 0, groups: int = 1):
    from transformers import Mamba2Config, Mamba2ForCausalLM

    return _tiny(
        Mamba2Config,
        Mamba2ForCausalLM,
        seed,
        hidden_size=32,
        num_hidden_layers=2,
        state_size=16,
        num_heads=4,
        head_dim=16,
        n_groups=groups,
        expand=2,
        chunk_size=16,
        tie_word_embeddings=True,
    )


def write_tiny_mamba2(path: Path, seed: int = 0) -> Path:
    return _save_hf(tiny_mamba2_model(seed), Path(path))


def write_tiny_rwkv(path: Path, seed: int = 0) -> Path:
    from transformers import RwkvConfig, RwkvForCausalLM

    model = _tiny(
        RwkvConfig,
        RwkvForCausalLM,
        seed,
        hidden_size=32,
        num_hidden_layers=2,
        attention_hidden_size=32,
        intermediate_size=64,
        context_length=256,
    )
    return _save_hf(model, Path(path))


def write_tiny_llama(path: Path, seed: int = 0) -> Path:
    """A generic transformers causal LM (softmax attention) with the byte tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model = _tiny(
        LlamaConfig,
        LlamaForCausalLM,
        seed,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    return _save_hf(model, Path(path))


def write_tiny_gla(path: Path, seed: int = 0) -> Path:
    """fla's GLA (its forward needs a CUDA GPU; writing the files does not)."""
    from fla.models import GLAConfig, GLAForCausalLM

    model = _tiny(
        GLAConfig,
        GLAForCausalLM,
        seed,
        hidden_size=64,
        num_hidden_layers=2,
        num_heads=2,
        fuse_cross_entropy=False,
    )
    return _save_hf(model, Path(path))


def full_width_mamba_on_cuda(name: str, layers: int = 4):
    """``name``'s benchmark configuration (Mamba-1.4B / Mamba-2-1.3B widths) cut to ``layers``
    layers, random weights, built on the GPU in fp32 (the GPU tests of the written-out step and
    prefill)."""
    from transformers import Mamba2ForCausalLM, MambaForCausalLM

    from jrt_prompt.bench.model import build_config

    config = build_config(name)
    config.num_hidden_layers = layers
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = (MambaForCausalLM if name.startswith("mamba-") else Mamba2ForCausalLM)(config)
    return model.eval()
