"""Loading the hazyresearch checkpoints of the "Just read twice" paper.

Three on-disk families, all ``config.json`` + ``pytorch_model.bin`` saved from a PyTorch-Lightning
training run (keys prefixed ``model.``, ``*metrics*`` counters mixed in):

* GPT-style hybrids (JRT-RNN ``hazyresearch/JRT-*``, Based ``hazyresearch/based-*``): config.json
  is a ``GPT2Config`` dump with ``mixer`` / ``alt_mixer`` / ``alt_mixer_2`` dicts and the layer
  indices ``alt_mixer_layers`` / ``alt_mixer_2_layers``; loaded into :class:`JRTForCausalLM`.
* the attention baseline (``hazyresearch/attn-*``): a ``GPT2Config`` dump without mixer dicts;
  full causal attention with partial rotary in every layer, also :class:`JRTForCausalLM`.
* Mamba (``hazyresearch/mamba-*``): the original mamba_ssm format, converted for transformers'
  ``MambaForCausalLM`` by :func:`jrt_prompt.models.adapters.mamba.convert_mamba_ssm_state_dict`.

config.json of these repositories was only partly published, so every size is read from the
tensors and cross-checked against whatever config.json states; a disagreement raises a
:class:`JRTError` that names the tensor and both shapes.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import JRTError
from .checkpoint import from_pretrained_checked, read_state_dict
from .modeling_jrt import JRTConfig, JRTForCausalLM

LAYER_KEY = re.compile(r"^transformer\.layers\.(\d+)\.")

# Mixer class names of the released configs (old and new module paths) -> our mixer kinds.
# Order matters: "PrefixLinearAttention" also contains "LinearAttention".
_TARGET_KINDS = (
    ("prefixlinear", "prefix_linear"),
    ("slid", "sliding_window"),
    ("slide", "sliding_window"),
    ("window", "sliding_window"),
    ("linearattention", "based"),
    ("linear_attention", "based"),
    ("baseconv", "base_conv"),
    ("convolution", "base_conv"),
    ("mha", "attention"),
)


# --------------------------------------------------------------------------------------------
# Key edits


def clean_state_dict(
    state_dict: dict[str, torch.Tensor], rename_conv1: bool = True
) -> dict[str, torch.Tensor]:
    """The key edits of the original loaders, in their order.

    Strip a leading ``model.``; drop every key containing ``metrics``; remap the old
    ``transformer.ln_0`` norm ordering; rename ``conv1`` to ``conv`` (GPT hybrids only).
    """
    state = {}
    for key, value in state_dict.items():
        key = key[len("model.") :] if key.startswith("model.") else key
        if "metrics" in key:
            continue
        state[key] = value
    if "transformer.ln_0.weight" in state:
        state = _remap_ln0(state)
    if rename_conv1:
        state = {key.replace("conv1", "conv"): value for key, value in state.items()}
    return state


def _remap_ln0(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old checkpoints normed *after* each block: ln_0 -> layer 0 norm1, norm1 -> norm2,
    norm2 of layer l-1 -> norm1 of layer l, the last norm2 -> ln_f."""
    n_layers = 1 + max((int(m.group(1)) for k in state if (m := LAYER_KEY.match(k))), default=-1)
    out = {}
    for key, value in state.items():
        m = LAYER_KEY.match(key)
        if key.startswith("transformer.ln_0."):
            key = key.replace("transformer.ln_0.", "transformer.layers.0.norm1.")
        elif m and ".norm1." in key:
            key = key.replace(".norm1.", ".norm2.")
        elif m and ".norm2." in key:
            i = int(m.group(1))
            if i == n_layers - 1:
                key = key.replace(f"transformer.layers.{i}.norm2.", "transformer.ln_f.")
            else:
                key = key.replace(f"transformer.layers.{i}.norm2.", f"transformer.layers.{i + 1}.norm1.")
        out[key] = value
    return out


# --------------------------------------------------------------------------------------------
# Configs


def _get(config: dict[str, Any], *names: str, default=None):
    for name in names:
        if config.get(name) is not None:
            return config[name]
    return default


def mixer_kind(mixer: dict[str, Any] | None, where: str) -> str:
    """Our mixer kind for one of the config's mixer dicts (by its ``_target_`` class path)."""
    target = str((mixer or {}).get("_target_", ""))
    name = target.lower()
    for needle, kind in _TARGET_KINDS:
        if needle in name:
            return kind
    raise JRTError(
        f"config.json {where}._target_ {target!r} is not a mixer this project knows "
        "(BaseConv, LinearAttention, PrefixLinearAttention, SlidingAttention)"
    )


def is_gpt_hybrid_config(config: dict[str, Any]) -> bool:
    return isinstance(config.get("mixer"), dict) and "_target_" in config["mixer"]


def is_hazy_attention_config(config: dict[str, Any]) -> bool:
    """A GPT2Config dump with RMSNorm and rotary: the attention baseline (not an OpenAI GPT-2)."""
    if is_gpt_hybrid_config(config) or "n_embd" not in config or "n_layer" not in config:
        return False
    if "d_model" in config or "ssm_cfg" in config:  # hazyresearch MambaConfig also has n_embd
        return False
    return bool(config.get("rms_norm")) or "rotary_emb_fraction" in config


def layer_schedule(config: dict[str, Any], n_layer: int) -> list[str]:
    """Mixer kind per layer from ``mixer`` / ``alt_mixer`` / ``alt_mixer_2`` and their layer lists."""
    if not is_gpt_hybrid_config(config):
        return ["attention"] * n_layer
    base = mixer_kind(config["mixer"], "mixer")
    alt_layers = set(config.get("alt_mixer_layers") or [])
    alt2_layers = set(config.get("alt_mixer_2_layers") or [])
    alt = mixer_kind(config.get("alt_mixer"), "alt_mixer") if alt_layers else None
    alt2 = mixer_kind(config.get("alt_mixer_2"), "alt_mixer_2") if alt2_layers else None
    schedule = []
    for i in range(n_layer):
        if i in alt2_layers:
            schedule.append(alt2)
        elif i in alt_layers:
            schedule.append(alt)
        else:
            schedule.append(base)
    return schedule


def jrt_config_from_hazy(config: dict[str, Any], state: dict[str, torch.Tensor] | None = None) -> JRTConfig:
    """A :class:`JRTConfig` from a hazyresearch GPT2Config dump, checked against ``state`` if given.

    Without ``state`` the config's own values (and the published defaults) are used.
    """
    if config.get("model_type") == JRTConfig.model_type:
        return JRTConfig(**{k: v for k, v in config.items() if k != "model_type"})
    hybrid = is_gpt_hybrid_config(config)
    d = int(_get(config, "n_embd", "hidden_size", default=0))
    n_layer = int(_get(config, "n_layer", "num_hidden_layers", default=0))
    if state is not None:
        emb = _require(state, "transformer.embeddings.word_embeddings.weight")
        if d and emb.shape[1] != d:
            raise JRTError(
                f"checkpoint tensor transformer.embeddings.word_embeddings.weight has shape {tuple(emb.shape)} "
                f"but config.json n_embd={d} implies ({emb.shape[0]}, {d})"
            )
        d = int(emb.shape[1])
        found = sorted({int(m.group(1)) for k in state if (m := LAYER_KEY.match(k))})
        if found != list(range(len(found))) or (n_layer and len(found) != n_layer):
            raise JRTError(
                f"checkpoint has transformer.layers {found[:1]}..{found[-1:]} ({len(found)} layers) "
                f"but config.json n_layer={n_layer}"
            )
        n_layer = len(found)
    if not d or not n_layer:
        raise JRTError("config.json lacks n_embd / n_layer: it is not a hazyresearch GPT-style config")

    schedule = layer_schedule(config, n_layer)
    alt = config.get("alt_mixer") or {}
    alt2 = config.get("alt_mixer_2") or {}
    conv = config.get("mixer") or {}
    feature_map = alt.get("feature_map") if isinstance(alt.get("feature_map"), dict) else {}
    feature_dim = int(_get(alt, "feature_dim", default=_get(feature_map, "input_dim", default=16)))
    num_heads = int(_get(alt, "num_heads", default=16))
    n_head = int(_get(config, "n_head", "num_attention_heads", default=16))
    vocab = int(_get(config, "vocab_size", default=50257))
    multiple = config.get("pad_vocab_size_multiple")
    if multiple is None:
        multiple = _infer_pad_multiple(vocab, state, default=8 if hybrid else 16)
    default_fraction = 1.0 if hybrid else 0.5
    window_size = int(_get(alt2, "window_size", default=256))
    # The MLP width is n_inner (else 8d/3) rounded up to 256 (hybrids), or to 256 then 128 (the
    # attention loader retries with the smaller rounding).
    stated = _get(config, "n_inner")
    stated = int(stated) if stated is not None else int(8 * d / 3)
    allowed_widths = [_round_up(stated, 256)] + ([] if hybrid else [_round_up(stated, 128)])
    intermediate = allowed_widths[0]
    if state is not None:
        fc2 = _require(state, "transformer.layers.0.mlp.fc2.weight")
        intermediate = int(fc2.shape[1])
        if intermediate not in allowed_widths:
            raise JRTError(
                f"checkpoint tensor transformer.layers.0.mlp.fc2.weight has shape {tuple(fc2.shape)} but "
                f"config.json (n_inner {_get(config, 'n_inner')}) implies ({d}, {allowed_widths[0]})"
            )
    conv_kernel, conv_expand = (
        int(_get(conv, "kernel_size", default=3)),
        int(_get(conv, "expand_proj", default=4)),
    )
    if state is not None and "base_conv" in schedule:
        i = schedule.index("base_conv")
        conv_w = _require(state, f"transformer.layers.{i}.mixer.conv.conv.weight")
        in_w = _require(state, f"transformer.layers.{i}.mixer.in_proj.weight")
        # ``kernel_sizes`` (plural) in the released configs is ignored by the original class.
        if (conv_w.shape[-1], in_w.shape[0]) != (conv_kernel, conv_expand * d):
            key, shape, implied = (
                (
                    f"transformer.layers.{i}.mixer.conv.conv.weight",
                    conv_w.shape,
                    (conv_expand * d // 2, 1, conv_kernel),
                )
                if conv_w.shape[-1] != conv_kernel
                else (f"transformer.layers.{i}.mixer.in_proj.weight", in_w.shape, (conv_expand * d, d))
            )
            raise JRTError(
                f"checkpoint tensor {key} has shape {tuple(shape)} but config.json mixer "
                f"(kernel_size {conv_kernel}, expand_proj {conv_expand}) implies {implied}"
            )
    if state is not None and {"based", "prefix_linear"} & set(schedule):
        i = next(j for j, kind in enumerate(schedule) if kind in ("based", "prefix_linear"))
        q_rows = int(_require(state, f"transformer.layers.{i}.mixer.proj_q.weight").shape[0])
        if q_rows != num_heads * feature_dim:
            raise JRTError(
                f"checkpoint tensor transformer.layers.{i}.mixer.proj_q.weight has shape "
                f"{tuple(state[f'transformer.layers.{i}.mixer.proj_q.weight'].shape)} but config.json "
                f"(num_heads {num_heads} x feature_dim {feature_dim}) implies ({num_heads * feature_dim}, {d})"
            )
    tie = bool(config.get("tie_word_embeddings", True))
    return JRTConfig(
        vocab_size=vocab,
        pad_vocab_size_multiple=int(multiple),
        hidden_size=d,
        num_hidden_layers=n_layer,
        layer_mixers=schedule,
        intermediate_size=int(intermediate),
        num_heads=num_heads,
        feature_dim=feature_dim,
        linear_attention_eps=float(_get(alt, "eps", default=1e-12)),
        enc_length=int(_get(alt, "enc_length", default=_get(config, "enc_length", default=1024))),
        attention_heads=n_head,
        sliding_window=window_size // 2,
        rotary_emb_fraction=float(_get(config, "rotary_emb_fraction", default=default_fraction)),
        rotary_emb_base=float(_get(config, "rotary_emb_base", default=10000.0)),
        conv_kernel_size=conv_kernel,
        conv_expand=conv_expand,
        rms_norm_eps=float(_get(config, "layer_norm_epsilon", default=1e-5)),
        residual_in_fp32=bool(config.get("residual_in_fp32", True)),
        tie_word_embeddings=tie,
        bos_token_id=_get(config, "bos_token_id", default=50256),
        eos_token_id=_get(config, "eos_token_id", default=50256),
    )


def _round_up(x: int, multiple: int) -> int:
    return math.ceil(x / multiple) * multiple


def _infer_pad_multiple(vocab: int, state, default: int) -> int:
    if state is None or "transformer.embeddings.word_embeddings.weight" not in state:
        return default
    rows = int(state["transformer.embeddings.word_embeddings.weight"].shape[0])
    for multiple in (1, 8, 16, 32, 64, 128):
        if _round_up(vocab, multiple) == rows:
            return multiple
    raise JRTError(
        f"checkpoint tensor transformer.embeddings.word_embeddings.weight has {rows} rows, which is not "
        f"vocab_size {vocab} padded to a multiple of 1/8/16/32/64/128: set pad_vocab_size_multiple in config.json"
    )


def _require(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise JRTError(f"checkpoint has no tensor {key}: it is not a hazyresearch GPT-style checkpoint")
    return state[key]


# --------------------------------------------------------------------------------------------
# Checking and loading


_UNSUPPORTED = (
    ("decay_proj.weight", "Based with a learned decay (use_decay_proj)"),
    ("transformer.decay.decay", "Based with a fixed decay (fixed_decay)"),
    ("mlp.fc3.weight", "the 'alt' MLP (mlp_type: alt)"),
)


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """Every tensor must exist in the model with the same shape, and every model weight must be
    present (the tied head excepted); the schedule from config.json must match the key names."""
    for key in state:
        for needle, what in _UNSUPPORTED:
            if key.endswith(needle):
                raise JRTError(
                    f"checkpoint tensor {key} belongs to {what}, which this version does not implement"
                )
    expected = model.state_dict()
    for i, block in enumerate(model.transformer.layers):
        prefix = f"transformer.layers.{i}.mixer."
        in_file = _kind_from_keys(state, prefix)
        ours = "softmax" if block.mixer_kind in ("sliding_window", "attention") else block.mixer_kind
        if in_file is not None and in_file != ours:
            raise JRTError(
                f"config.json puts a {block.mixer_kind} mixer at layer {i} but the checkpoint's keys "
                f"({prefix}*) are those of a {in_file} mixer: check alt_mixer_layers / alt_mixer_2_layers"
            )
    for key, tensor in state.items():
        if key not in expected:
            raise JRTError(
                f"checkpoint tensor {key} {tuple(tensor.shape)} has no place in the model built from config.json"
            )
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise JRTError(
                f"checkpoint tensor {key} has shape {tuple(tensor.shape)} but config.json implies "
                f"{tuple(expected[key].shape)}: config.json and the weights do not belong together"
            )
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    missing = sorted(set(expected) - set(state) - tied)
    if missing:
        raise JRTError(
            f"checkpoint lacks tensor {missing[0]} ({len(missing)} missing): the file is incomplete"
        )


def _kind_from_keys(state: dict[str, torch.Tensor], prefix: str) -> str | None:
    if prefix + "proj_k_enc.weight" in state:
        return "prefix_linear"
    if prefix + "proj_q.weight" in state:
        return "based"
    if prefix + "Wqkv.weight" in state:
        return "softmax"
    if prefix + "in_proj.weight" in state:
        return "base_conv"
    return None


def build_jrt_model(
    state: dict[str, torch.Tensor], jrt_config: JRTConfig, raw_config: dict[str, Any], device, dtype
) -> JRTForCausalLM:
    """Instantiate without random init, check every tensor, load strictly."""
    with torch.device("meta"):
        model = JRTForCausalLM(jrt_config)
    check_state_dict(model, state, raw_config)
    if jrt_config.tie_word_embeddings:
        # The original strict load copies both names into one tied tensor; the head comes last.
        shared = state.get("lm_head.weight", state["transformer.embeddings.word_embeddings.weight"])
        state = {**state, "transformer.embeddings.word_embeddings.weight": shared, "lm_head.weight": shared}
    model.load_state_dict(state, strict=True, assign=True)
    if jrt_config.tie_word_embeddings:
        model.lm_head.weight = model.transformer.embeddings.word_embeddings.weight
    return model.to(device=device, dtype=dtype or torch.float32).eval()


def load_gpt_hybrid(path: Path, config: dict[str, Any], device, dtype) -> JRTForCausalLM:
    """JRT-RNN / Based: our own save_pretrained format, or a hazyresearch checkpoint."""
    if config.get("model_type") == JRTConfig.model_type:
        model = from_pretrained_checked(JRTForCausalLM, path, dtype=dtype or torch.float32)
        return model.to(device).eval()
    state = clean_state_dict(read_state_dict(path), rename_conv1=True)
    jrt_config = jrt_config_from_hazy(config, state)
    return build_jrt_model(state, jrt_config, config, device, dtype)


def load_attention(path: Path, config: dict[str, Any], device, dtype) -> JRTForCausalLM:
    """The attention baseline (no conv1 rename in its original loader)."""
    state = clean_state_dict(read_state_dict(path), rename_conv1=False)
    jrt_config = jrt_config_from_hazy(config, state)
    if set(jrt_config.layer_mixers) != {"attention"}:
        raise JRTError(
            "config.json of an attention checkpoint names mixer dicts: load it as a JRT/Based model"
        )
    return build_jrt_model(state, jrt_config, config, device, dtype)


def load_mamba(path: Path, config: dict[str, Any], device, dtype):
    """hazyresearch Mamba: the original mamba_ssm layout (plus ``model.`` / metrics), into
    transformers' MambaForCausalLM. Runs in fp32 unless asked otherwise, like the paper's harness."""
    from transformers import MambaForCausalLM

    from .adapters.mamba import build_from_state_dict, convert_mamba_ssm_state_dict

    state = clean_state_dict(read_state_dict(path), rename_conv1=False)
    hf_config, converted = convert_mamba_ssm_state_dict(state, config)
    return build_from_state_dict(MambaForCausalLM, hf_config, converted, device, dtype)


# --------------------------------------------------------------------------------------------
# State sizes


def hybrid_state_bytes(config: dict[str, Any], prompt_tokens: int, dtype_bytes: int = 2) -> int:
    """Bytes one sequence's inference state holds after ``prompt_tokens`` tokens.

    Linear attention: H·F·(hd + 1) numbers (kv and k sums); BaseConv: its last kernel-1 conv
    inputs; sliding window: keys and values of min(prompt, window) tokens; full attention: keys
    and values of every token.
    """
    cfg = jrt_config_from_hazy(config)
    d = cfg.hidden_size
    feats = 1 + cfg.feature_dim + cfg.feature_dim**2
    head_dim = d // cfg.num_heads
    numbers = 0
    for kind in cfg.layer_mixers:
        if kind in ("based", "prefix_linear"):
            numbers += cfg.num_heads * feats * (head_dim + 1)
        elif kind == "base_conv":
            numbers += (cfg.conv_expand * d // 2) * (cfg.conv_kernel_size - 1)
        elif kind == "sliding_window":
            numbers += 2 * d * min(prompt_tokens, cfg.sliding_window)
        else:
            numbers += 2 * d * prompt_tokens
    return numbers * dtype_bytes
