"""Helpers shared by the commands: error reporting and the console."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from jrt_prompt.errors import JRTError

# Output piped to a file or another program keeps long rows (tables, prompts) on one line.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable)


def reports_errors(fn: F) -> F:
    """Turn a :class:`JRTError` raised by a job into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except JRTError as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


# Options shared by the commands that load a model and render JRT prompts.
ModelOption = Annotated[
    str, typer.Option("--model", "-m", help="Roster name (see `jrt models`), hub id or local directory.")
]
RepeatOption = Annotated[
    int | None, typer.Option("--repeat", "-k", help="Copies of the context (default 2; 1 for JRT-RNN).")
]
QuestionFirstOption = Annotated[
    bool | None,
    typer.Option(
        "--question-first/--no-question-first",
        help="Also put the question before the context (default: on when repeat > 1).",
    ),
]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
DtypeOption = Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")]


def model_dtype(dtype: str) -> str | None:
    """The --dtype value for the library: ``None`` lets the loader pick (``auto``)."""
    return None if dtype == "auto" else dtype
