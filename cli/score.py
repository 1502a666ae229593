"""`jrt score`: resumable batch scoring of a JSONL file of context/question rows."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from ._common import (
    DeviceOption,
    DtypeOption,
    ModelOption,
    QuestionFirstOption,
    RepeatOption,
    _Terminated,
    console,
    err_console,
    library_warnings,
    model_dtype,
    progress,
    quiet_libraries,
    reports_errors,
    usage_error,
)


def _shard_and_device(shard: str | None, device: str) -> tuple[tuple[int, int] | None, str]:
    """``--shard I/N``, else torchrun's RANK/WORLD_SIZE; each torchrun process takes its own GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if shard is None and world > 1:
        shard = f"{os.environ.get('RANK', '0')}/{world}"
        if device == "auto" and os.environ.get("LOCAL_RANK") is not None:
            import torch

            if torch.cuda.is_available():
                device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    if shard is None:
        return None, device
    index, sep, count = shard.partition("/")
    if not sep or not index.strip().isdigit() or not count.strip().isdigit():
        raise usage_error(f"--shard {shard!r} is invalid: use I/N, e.g. 0/4")
    return (int(index), int(count)), device


@reports_errors(resumable=True)
def score_command(
    input: Annotated[Path, typer.Argument(help="JSONL file: one object per line with context and question.")],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Output JSONL (appended to; rerun the same command to resume)."),
    ],
    model: ModelOption = "demo",
    repeat: RepeatOption = None,
    question_first: QuestionFirstOption = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help="Prompts per batch, >= 1 (length-sorted); default: sized from free GPU memory, 8 on CPU."),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens to generate per row, >= 1.")] = 48,
    limit: Annotated[int | None, typer.Option(help="Score only the first N rows (N >= 1).")] = None,
    max_prompt_tokens: Annotated[
        int | None,
        typer.Option(
            help="Rows whose prompt is longer become error rows (default: the model's positions minus "
            "--max-new-tokens, else 32768)."
        ),
    ] = None,
    summary: Annotated[
        Path | None, typer.Option(help="Summary JSON path (default: OUT.summary.json).")
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            help="I/N: score every N-th row from row I into OUT.shard-I-of-N; the last shard to finish "
            "merges into OUT. Under torchrun the default is RANK/WORLD_SIZE, on GPU LOCAL_RANK."
        ),
    ] = None,
    fit_context: Annotated[
        bool,
        typer.Option(
            "--fit-context",
            metavar="",
            help="Cut a too-long context (every copy alike) instead of an error row.",
        ),
    ] = False,
    retry_errors: Annotated[
        bool, typer.Option("--retry-errors", metavar="", help="On resume, score the error rows of OUT again.")
    ] = False,
    strict: Annotated[
        bool, typer.Option("--strict", metavar="", help="Exit with code 1 when any row is an error row.")
    ] = False,
    reuse_state: Annotated[
        str,
        typer.Option(
            help="auto: rows sharing a context in the context-first layout (--no-question-first) read it "
            "once and answer from copies of the model's state; off: every row reads its whole prompt."
        ),
    ] = "auto",
    state_cache: Annotated[
        Path | None,
        typer.Option(help="Directory keeping document states across runs (keyed by model and document)."),
    ] = None,
    state_cache_mb: Annotated[
        int, typer.Option(help="Size bound of --state-cache in MiB; least recently used states go first.")
    ] = 1024,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    """Score every row of INPUT with MODEL into OUT; safe to kill and rerun."""
    for option, value in (
        ("--limit", limit),
        ("--max-prompt-tokens", max_prompt_tokens),
        ("--repeat", repeat),
    ):
        if value is not None and value < 1:
            raise usage_error(f"{option} {value} is invalid: use a whole number >= 1")
    if reuse_state not in ("auto", "off"):
        raise usage_error(f"--reuse-state {reuse_state!r} is invalid: use auto or off")
    if state_cache_mb < 1:
        raise usage_error(f"--state-cache-mb {state_cache_mb} is invalid: use a whole number >= 1")
    shard_spec, device = _shard_and_device(shard, device)
    quiet_libraries()
    from jrt_prompt.scoring import Terminated, score_file

    try:
        with progress("scoring") as display, library_warnings():

            def on_start(total: int, done: int) -> None:
                if done:
                    err_console.print(f"resuming: {done} of {total} rows already in {out}", highlight=False)
                display.start(total - done)

            result = score_file(
                input,
                out,
                model=model,
                repeat=repeat,
                question_first=question_first,
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                limit=limit,
                max_prompt_tokens=max_prompt_tokens,
                summary=summary,
                retry_errors=retry_errors,
                fit_context=fit_context,
                shard=shard_spec,
                reuse_state=reuse_state,
                state_cache=state_cache,
                state_cache_bytes=state_cache_mb << 20,
                device=device,
                dtype=model_dtype(dtype),
                on_start=on_start,
                on_progress=display.advance,
            )
    except KeyboardInterrupt as exc:
        # Scoring's own SIGTERM / Ctrl-C handling: finished rows are on disk, the lock is released.
        terminated = isinstance(exc, Terminated | _Terminated)
        what = "terminated (SIGTERM)" if terminated else "interrupted"
        err_console.print(
            f"{what}: finished rows are in {out}; rerun the same command to resume",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(code=143 if terminated else 130) from None
    if not result.in_input_order:
        err_console.print(
            f"warning: every row is in {out}, but in the order they finished: the disk had no room to "
            "rewrite it in input order (rerun the same command with more free space to reorder it)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    console.print_json(json.dumps(result.to_json()))
    if strict and result.errors:
        err_console.print(
            f"[bold red]error:[/] {result.errors} of {result.rows} rows are error rows (--strict)"
        )
        raise typer.Exit(code=1)
