"""`jrt run`: questions about one document (one answer per line, in the order asked).

stdout carries the answer alone (``answer=$(jrt run ...)``); how it was obtained goes to stderr,
or, with ``--json``, both go to stdout as one JSON object.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from ._common import (
    DeviceOption,
    DtypeOption,
    ModelOption,
    QuestionFirstOption,
    RepeatOption,
    console,
    err_console,
    model_dtype,
    quiet_libraries,
    reports_errors,
    usage_error,
)


@reports_errors
def run_command(
    question: Annotated[
        list[str],
        typer.Option(
            "--question",
            "-q",
            help="The question to answer from the context; repeat the option to ask several "
            "(one answer per line; with --no-question-first the context is read once for all).",
        ),
    ],
    context: Annotated[
        str | None,
        typer.Option(
            "--context",
            "-c",
            metavar="FILE|-",
            help="A UTF-8 text file holding the context, or - to read it from standard input.",
        ),
    ] = None,
    text: Annotated[
        str | None,
        typer.Option("--text", "-t", help="The context text itself (instead of --context FILE)."),
    ] = None,
    model: ModelOption = "demo",
    repeat: RepeatOption = None,
    question_first: QuestionFirstOption = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens to generate, >= 1.")] = 48,
    max_prompt_tokens: Annotated[
        int | None,
        typer.Option(
            help="Cut the context so the prompt fits this many tokens (default: the model's positions "
            "minus --max-new-tokens, else 32768)."
        ),
    ] = None,
    show_prompt: Annotated[
        bool,
        typer.Option("--show-prompt", metavar="", help="Print the prompt (on stderr) before the answer."),
    ] = False,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json", metavar="", help="Print the answer and how it was obtained as one JSON object."
        ),
    ] = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    mode: Annotated[
        str,
        typer.Option(
            help="default, or reference: reproduce the paper's evaluation harness (docs/inference_modes.md)."
        ),
    ] = "default",
) -> None:
    """Answer QUESTION about a context with JRT-Prompt: the context is read REPEAT times, the question also up front.

    The answer alone goes to stdout; the prompt (--show-prompt), warnings and a line of metadata go
    to stderr.
    """
    if (context is None) == (text is None):
        raise usage_error("pass the context once: --context FILE (or - for standard input), or --text TEXT")
    if mode not in ("default", "reference"):
        raise usage_error(f"--mode {mode!r} is unknown: use default or reference")
    quiet_libraries()
    from jrt_prompt.run import read_context, run_questions

    document = read_context(context) if context is not None else text
    status = _Status()
    try:
        results = run_questions(
            document,
            list(question),
            model=model,
            repeat=repeat,
            question_first=question_first,
            max_new_tokens=max_new_tokens,
            max_prompt_tokens=max_prompt_tokens,
            device=device,
            dtype=model_dtype(dtype),
            mode=mode,
            on_stage=status.stage,
            on_warning=lambda w: err_console.print(
                f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True
            ),
        )
    finally:
        status.stop()
    for result in results:
        _print_result(result, show_prompt=show_prompt, json_out=json_out, mode=mode)


def _print_result(result, *, show_prompt: bool, json_out: bool, mode: str) -> None:
    answer = result.answer.text.strip()
    cut = result.fitted.cut_tokens if result.fitted and result.fitted.truncated else 0
    if json_out:
        doc = {
            "answer": answer,
            "raw_text": result.answer.text,
            "model": result.model,
            "family": result.family,
            "repeat": result.repeat,
            "question_first": result.question_first,
            "prompt_tokens": int(result.answer.prompt_tokens),
            "answer_tokens": int(result.answer.answer_tokens),
            "finish_reason": result.answer.finish_reason,
            "seconds": round(float(result.answer.seconds), 6),
            "context_cut_tokens": cut,
            "mode": mode,
            "warnings": list(result.warnings),
        }
        if show_prompt:
            doc["prompt"] = result.prompt
        sys.stdout.write(json.dumps(doc, ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return
    if show_prompt:
        err_console.rule("prompt")
        err_console.print(result.prompt, markup=False, highlight=False, soft_wrap=True)
        err_console.rule("answer")
    console.print(answer, markup=False, highlight=False, soft_wrap=True)
    cut_text = f", context cut by {cut} tokens" if cut else ""
    err_console.print(
        f"[dim]{result.model} ({result.family}), repeat={result.repeat}, question_first={result.question_first}, "
        f"{result.answer.prompt_tokens} prompt tokens, {result.answer.answer_tokens} answer tokens, "
        f"{result.answer.seconds:.2f} s{cut_text}[/]",
        soft_wrap=True,
        highlight=False,
    )


# Off a terminal, a prompt this long gets a line saying that it is being read (it can take minutes).
LONG_PROMPT_TOKENS = 2048


class _Status:
    """What ``jrt run`` is doing, on stderr: a spinner on a terminal; elsewhere one line for a long prompt."""

    def __init__(self):
        self._status = None

    def stage(self, text: str, prompt_tokens: int | None = None) -> None:
        if sys.stderr.isatty():
            if self._status is None:
                self._status = err_console.status(text)
                self._status.start()
            else:
                self._status.update(text)
        elif prompt_tokens is not None and prompt_tokens >= LONG_PROMPT_TOKENS:
            print(f"{text} ...", file=sys.stderr, flush=True)

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
