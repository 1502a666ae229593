"""`jrt run`: one question about one document."""

from __future__ import annotations

from typing import Annotated

import typer

from jrt_prompt.run import DEFAULT_MODEL, read_context, run_prompt

from ._common import (
    DeviceOption,
    DtypeOption,
    ModelOption,
    QuestionFirstOption,
    RepeatOption,
    console,
    model_dtype,
    reports_errors,
)
from .main import app


@app.command("run")
@reports_errors
def run_command(
    question: Annotated[
        str, typer.Option("--question", "-q", help="The question to answer from the context.")
    ],
    context: Annotated[
        str, typer.Option("--context", "-c", help="The context text, or a path to a UTF-8 text file.")
    ],
    model: ModelOption = DEFAULT_MODEL,
    repeat: RepeatOption = None,
    question_first: QuestionFirstOption = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 48,
    max_prompt_tokens: Annotated[
        int | None, typer.Option(help="Cut the context so the prompt fits this many tokens.")
    ] = None,
    show_prompt: Annotated[
        bool, typer.Option("--show-prompt", help="Print the prompt before the answer.")
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
    """Answer QUESTION about CONTEXT with JRT-Prompt: the context is read REPEAT times, the question also up front."""
    result = run_prompt(
        read_context(context),
        question,
        model=model,
        repeat=repeat,
        question_first=question_first,
        max_new_tokens=max_new_tokens,
        max_prompt_tokens=max_prompt_tokens,
        device=device,
        dtype=model_dtype(dtype),
        mode=mode,
    )
    if show_prompt:
        console.rule("prompt")
        console.print(result.prompt, markup=False, highlight=False, soft_wrap=True)
        console.rule("answer")
    console.print(result.answer.text.strip(), markup=False, highlight=False, soft_wrap=True)
    cut = (
        f", context cut by {result.fitted.cut_tokens} tokens"
        if result.fitted and result.fitted.truncated
        else ""
    )
    console.print(
        f"[dim]{result.model} ({result.family}), repeat={result.repeat}, question_first={result.question_first}, "
        f"{result.answer.prompt_tokens} prompt tokens, {result.answer.answer_tokens} answer tokens, "
        f"{result.answer.seconds:.2f} s{cut}[/]",
        soft_wrap=True,
    )
