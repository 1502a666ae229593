"""Entry point of the `jrt` command: one typer app, each command in its own module."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="jrt",
    help="Make recurrent language models recall their prompt: JRT-Prompt and JRT-RNN.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each command module registers itself on `app` (run, models, score, eval, report, bench, synth).
from . import run as _run  # noqa: E402,F401
from . import models as _models  # noqa: E402,F401


def main() -> None:  # pragma: no cover - console script shim
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
