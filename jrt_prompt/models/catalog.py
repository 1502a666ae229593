"""The roster as rows for ``jrt models``: memory per sequence and local availability."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .loading import find_local
from .registry import roster


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


def model_table(prompt_tokens: int = 2048) -> list[ModelRow]:
    rows = []
    for spec in roster().values():
        rows.append(
            ModelRow(
                spec.name,
                spec.family,
                spec.params,
                spec.hub_id,
                spec.memory_bytes(prompt_tokens),
                transformer_kv_bytes(spec.arch, prompt_tokens),
                find_local(spec),
            )
        )
    return rows
