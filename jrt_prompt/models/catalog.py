"""The roster as rows for ``jrt models``: memory per sequence and local availability."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import JRTArgumentError, JRTError
from .checkpoint import read_config
from .loading import find_local, get_adapter, package_dir
from .registry import ModelSpec, roster


@dataclass(frozen=True)
class ModelRow:
    name: str
    family: str
    params: str
    hub_id: str | None
    memory_bytes: int | None
    transformer_kv_bytes: int | None
    local_path: Path | None


def transformer_kv_bytes(arch: dict, prompt_tokens: int, dtype_bytes: int = 2) -> int | None:
    """KV cache of a Transformer with the same width and depth (keys and values for every token)."""
    width = arch.get("d_model", arch.get("n_embd", arch.get("hidden_size")))
    layers = arch.get("n_layer", arch.get("num_hidden_layers"))
    if not width or not layers:
        return None
    return 2 * int(layers) * int(width) * prompt_tokens * dtype_bytes


def memory_bytes(spec: ModelSpec, prompt_tokens: int) -> int | None:
    """State or KV-cache bytes of one sequence; shipped models are sized from their config.json."""
    if spec.package:
        try:
            config = read_config(package_dir(spec.package))
            return get_adapter(spec.adapter).state_bytes(config, prompt_tokens, 2)
        except JRTError:
            return None
    return spec.memory_bytes(prompt_tokens)


def model_table(prompt_tokens: int = 2048) -> list[ModelRow]:
    if not isinstance(prompt_tokens, int) or prompt_tokens < 1:
        raise JRTArgumentError(f"prompt_tokens={prompt_tokens!r} is invalid: size the memory at a positive token count")
    rows = []
    for spec in roster().values():
        arch = spec.arch
        if spec.package and not arch:
            try:
                arch = read_config(package_dir(spec.package))
            except JRTError:
                arch = {}
        rows.append(
            ModelRow(
                spec.name,
                spec.family,
                spec.params,
                spec.hub_id,
                memory_bytes(spec, prompt_tokens),
                transformer_kv_bytes(arch, prompt_tokens),
                find_local(spec),
            )
        )
    return rows
