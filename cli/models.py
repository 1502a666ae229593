"""`jrt models`: the roster, what each model's state costs, and which are available locally."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from ._common import console, reports_errors


@reports_errors
def models_command(
    prompt_tokens: Annotated[
        int, typer.Option(help="Prompt length (tokens, >= 1) at which to size the memory columns.")
    ] = 2048,
    local_only: Annotated[
        bool, typer.Option("--local", metavar="", help="Only list models found locally.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", metavar="", help="Print the rows as a JSON list.")
    ] = False,
) -> None:
    """List the roster: family, size, recurrent state vs a Transformer's KV cache, local availability."""
    from jrt_prompt.models.catalog import model_table

    rows = [row for row in model_table(prompt_tokens) if row.local_path or not local_only]
    if json_out:
        doc = [
            {
                "name": row.name,
                "family": row.family,
                "params": row.params,
                "hub_id": row.hub_id,
                "prompt_tokens": prompt_tokens,
                "state_bytes": row.memory_bytes,
                "transformer_kv_bytes": row.transformer_kv_bytes,
                "local_path": str(row.local_path) if row.local_path else None,
            }
            for row in rows
        ]
        sys.stdout.write(json.dumps(doc, indent=1) + "\n")
        return
    from rich.table import Table

    table = Table(
        title=f"jrt-prompt models (memory per sequence after {prompt_tokens} prompt tokens, 16-bit)"
    )
    for column in ("name", "family", "params", "hub id", "state / KV", "Transformer KV", "local"):
        table.add_column(column, no_wrap=column in ("name", "state / KV", "Transformer KV"))
    for row in rows:
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
