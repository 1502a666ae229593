"""Helpers shared by the commands: error reporting, the consoles, option types, progress display.

Nothing here imports torch, transformers or the jobs: ``jrt --help``, ``jrt --version`` and usage
errors stay fast. Commands import their job function inside their body.
"""

from __future__ import annotations

import functools
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, TypeVar

import typer
from rich.console import Console

# Output piped to a file or another program keeps long rows (tables, prompts) on one line.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

F = TypeVar("F", bound=Callable)


def error(message: str) -> None:
    """One line on stderr: ``error: <message>``."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True)


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0].strip() if lines else type(exc).__name__


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C."""


def _raise_terminated(signum, frame):  # pragma: no cover - exercised through a subprocess
    raise _Terminated()


def reports_errors(fn: F | None = None, *, resumable: bool = False):
    """Turn a :class:`JRTError` raised by a job into one line on stderr and exit code 2.

    Ctrl-C and SIGTERM end the command with exit code 130 (143 for SIGTERM) and one line; for a
    ``resumable`` command that line says how to resume.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            from jrt_prompt.errors import JRTError

            previous = None
            try:
                previous = signal.signal(signal.SIGTERM, _raise_terminated)
            except ValueError:  # not the main thread
                previous = None
            try:
                return fn(*args, **kwargs)
            except JRTError as exc:
                error(_first_line(exc))
                raise typer.Exit(code=2) from None
            except KeyboardInterrupt as exc:
                what = "terminated" if isinstance(exc, _Terminated) else "interrupted"
                hint = ": rerun the same command to resume" if resumable else ""
                print(f"{what}{hint}", file=sys.stderr)
                raise typer.Exit(code=143 if isinstance(exc, _Terminated) else 130) from None
            finally:
                if previous is not None:
                    signal.signal(signal.SIGTERM, previous)

        return wrapper  # type: ignore[return-value]

    return decorate(fn) if fn is not None else decorate


def usage_error(message: str) -> Exception:
    """An invalid option found by a command before any work: one ``error:`` line, exit code 2."""
    from jrt_prompt.errors import JRTArgumentError

    return JRTArgumentError(message)


# --- options shared by the commands that load a model and render JRT prompts ----------------------

ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="A roster name (see `jrt models`), a local checkpoint directory, or a hub id.",
    ),
]
RepeatOption = Annotated[
    int | None,
    typer.Option("--repeat", "-k", help="Copies of the context, >= 1 (default 2; 1 for JRT-RNN)."),
]
QuestionFirstOption = Annotated[
    bool | None,
    typer.Option(
        "--question-first/--no-question-first",
        help="Also put the question before the context (default: on when repeat > 1).",
        show_default=False,
    ),
]
DeviceOption = Annotated[str, typer.Option(help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N.")]
DtypeOption = Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")]


def model_dtype(dtype: str) -> str | None:
    """The --dtype value for the library: ``None`` lets the loader pick (``auto``)."""
    return None if dtype == "auto" else dtype


def auto_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a CUDA GPU is visible, else ``cpu`` (imports torch)."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def quiet_libraries() -> None:
    """Silence transformers' logging and progress bars (imports transformers; call before loading)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def split_list(values: list[str] | None) -> list[str]:
    """Repeated options and comma lists alike: ``["a,b", "c"]`` -> ``["a", "b", "c"]``."""
    out: list[str] = []
    for value in values or []:
        out += [part.strip() for part in value.split(",") if part.strip()]
    return out


def split_ints(values: list[str] | None, option: str) -> list[int]:
    out = []
    for part in split_list(values):
        try:
            out.append(int(part))
        except ValueError:
            raise usage_error(
                f"{option} takes whole numbers (repeatable or comma-separated); got {part!r}"
            ) from None
    return out


@contextmanager
def library_warnings() -> Iterator[None]:
    """Show the jobs' logged warnings (``jrt_prompt.*`` loggers) as ``warning: ...`` lines on stderr."""
    import logging

    class _Handler(logging.Handler):
        def emit(self, record):
            err_console.print(f"[yellow]warning:[/] {record.getMessage()}", highlight=False, soft_wrap=True)

    logger = logging.getLogger("jrt_prompt")
    handler = _Handler(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


# --- progress ----------------------------------------------------------------------------------


class Progress:
    """Rows done out of a total, on stderr.

    On a terminal: a rich progress bar (rows/s, ETA). Elsewhere (logs, CI, nohup): a plain line
    ``<label>: done/total rows, r rows/s, ETA s`` at most every ``interval`` seconds, and one at
    the end.
    """

    def __init__(self, label: str, *, interval: float = 10.0, stream=None, tty: bool | None = None):
        self.label = label
        self.interval = interval
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.total = 0
        self.done = 0
        self._bar = None
        self._task = None
        self._started = 0.0
        self._last = 0.0

    def start(self, total: int) -> None:
        self.total, self.done = total, 0
        self._started = self._last = time.perf_counter()
        if self.tty:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn(f"[bold]{self.label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}", style="cyan"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=err_console,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=total, rate="-- rows/s")
        else:
            self._line(force=True)

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, advance=n, rate=self._rate_text())
        else:
            self._line()

    def _rate(self) -> float:
        elapsed = time.perf_counter() - self._started
        return self.done / elapsed if elapsed > 0 and self.done else 0.0

    def _rate_text(self) -> str:
        rate = self._rate()
        return f"{rate:.2f} rows/s" if rate else "-- rows/s"

    def _line(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last < self.interval and self.done < self.total:
            return
        self._last = now
        rate = self._rate()
        eta = f", ETA {(self.total - self.done) / rate:.0f} s" if rate and self.done < self.total else ""
        speed = f", {rate:.2f} rows/s" if rate else ""
        print(f"{self.label}: {self.done}/{self.total} rows{speed}{eta}", file=self.stream, flush=True)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


@contextmanager
def progress(label: str, **kwargs) -> Iterator[Progress]:
    display = Progress(label, **kwargs)
    try:
        yield display
    finally:
        display.stop()
