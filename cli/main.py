"""Entry point of the `jrt` command: one typer app, each command in its own module."""

from __future__ import annotations

import os

import typer

# Quiet library chatter (weight-loading progress bars, kernel fall-back notices) on the command line.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def _quiet_libraries() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


app = typer.Typer(
    name="jrt",
    help="Make recurrent language models recall their prompt: JRT-Prompt and JRT-RNN.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    callback=_quiet_libraries,
)

# Each command module registers itself on `app` (run, models, score, eval, report, bench, synth).
from . import bench as _bench  # noqa: E402,F401
from . import evaluate as _evaluate  # noqa: E402,F401
from . import models as _models  # noqa: E402,F401
from . import run as _run  # noqa: E402,F401
from . import score as _score  # noqa: E402,F401
from . import synth as _synth  # noqa: E402,F401


def main() -> None:  # pragma: no cover - console script shim
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
