"""`jrt models`: the roster, what each model's state costs, and which are available locally."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from jrt_prompt.models.catalog import model_table

from ._common import console, reports_errors
from .main import app


@app.command("models")
@reports_errors
def models_command(
    prompt_tokens: Annotated[
        int, typer.Option(help="Prompt length at which to size the memory columns.")
    ] = 2048,
    local_only: Annotated[bool, typer.Option("--local", help="Only list models found locally.")] = False,
) -> None:
    """List the roster: family, size, recurrent state vs a Transformer's KV cache, local availability."""
    rows = model_table(prompt_tokens)
    table = Table(
        title=f"jrt-prompt models (memory per sequence after {prompt_tokens} prompt tokens, 16-bit)"
    )
    for column in ("name", "family", "params", "hub id", "state / KV", "Transformer KV", "local"):
        table.add_column(column, no_wrap=column in ("name", "state / KV", "Transformer KV"))
    for row in rows:
        if local_only and not row.local_path:
            continue
        table.add_row(
            row.name,
            row.family,
            row.params,
            row.hub_id or "(ships with jrt-prompt)",
            _size(row.memory_bytes),
            _size(row.transformer_kv_bytes),
            str(row.local_path) if row.local_path else "no",
        )
    console.print(table)


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
