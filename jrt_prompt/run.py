"""``jrt run``: answer one question about one context with JRT-Prompt."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from .errors import JRTArgumentError, JRTError
from .generation import Generation, generate_like_harness, generate_loaded
from .models.loading import LoadedModel, load_model
from .prompts import FittedPrompt, JRTPrompt, prompt_token_cap

DEFAULT_MODEL = "demo"


@dataclass(frozen=True)
class RunResult:
    """The answer, and how the prompt was built."""

    model: str
    family: str
    prompt: str
    answer: Generation
    repeat: int
    question_first: bool
    fitted: FittedPrompt | None
    warnings: tuple[str, ...] = field(default=())


def read_context(path: str | os.PathLike, stdin: TextIO | None = None) -> str:
    """The context held in the UTF-8 text file ``path``; ``"-"`` reads standard input.

    A path is never taken as the context itself: pass literal text to :func:`run_prompt` directly
    (``jrt run --text``).
    """
    if str(path) == "-":
        text = (stdin if stdin is not None else sys.stdin).read()
        if not text.strip():
            raise JRTArgumentError("context from standard input (--context -) is empty: pipe the document in")
        return text
    candidate = Path(path).expanduser()
    if candidate.is_dir():
        raise JRTArgumentError(
            f"context file {path} is a directory: pass a text file, - for standard input, or the text with --text"
        )
    if not candidate.is_file():
        raise JRTArgumentError(
            f"context file {path} does not exist: pass an existing text file, - for standard input, "
            "or the text itself with --text"
        )
    try:
        text = candidate.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise JRTArgumentError(
            f"context file {path} is not UTF-8 text (a PDF or other binary file?): convert it to UTF-8 text"
        ) from None
    except OSError as exc:
        raise JRTError(
            f"context file {path} cannot be read ({exc.strerror}): check its permissions"
        ) from None
    if not text.strip():
        raise JRTArgumentError(f"context file {path} is empty: put the document text in it")
    return text


def trained_tokens(loaded: LoadedModel) -> int | None:
    """The longest prompt the model was trained on, where the checkpoint says (``training.json`` of
    models trained by this project, else the config's position limit)."""
    record = Path(loaded.path) / "training.json"
    if record.is_file():
        try:
            lengths = json.loads(record.read_text()).get("sequence_lengths") or {}
            values = [v for v in lengths.values() if isinstance(v, int) and v > 0]
            if values:
                return max(values)
        except (OSError, ValueError, AttributeError):
            pass
    return loaded.token_limit()


def default_repeat(loaded: LoadedModel) -> int:
    """JRT-RNN reads its prompt non-causally already, so its prompt is shown once; others twice."""
    return 1 if loaded.adapter.reads_prompt_twice else 2


def run_prompt(
    context: str,
    question: str,
    *,
    model: str | LoadedModel = DEFAULT_MODEL,
    repeat: int | None = None,
    question_first: bool | None = None,
    separator: str = "\n",
    max_new_tokens: int = 48,
    max_prompt_tokens: int | None = None,
    stop: tuple[str, ...] = ("\n",),
    device: str = "auto",
    dtype: str | None = None,
    mode: str = "default",
    on_stage: Callable[[str, int | None], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> RunResult:
    """Render the JRT prompt for ``context``/``question``, generate the answer greedily, return both.

    mode: ``"default"`` (left padding masked, fp32 states) or ``"reference"`` (the published
    evaluation harness's behaviour, to match the paper's numbers; see docs/inference_modes.md).
    on_stage: ``on_stage(text, prompt_tokens)`` before each long step: loading the model
        (``prompt_tokens`` None), then reading the prompt and generating.
    on_warning: called with each warning (also kept in ``RunResult.warnings``) before generating.
    """
    if mode not in ("default", "reference"):
        raise JRTArgumentError(f"mode {mode!r} is unknown: use default or reference")
    # Check the options before spending time on loading the model (without building the prompt).
    JRTPrompt(repeat=1 if repeat is None else repeat, separator=separator)
    JRTPrompt.plain(separator).render("", question)
    if not isinstance(context, str):
        raise JRTArgumentError(f"context must be a string, got {type(context).__name__}")
    if max_new_tokens < 1:
        raise JRTArgumentError(f"max_new_tokens={max_new_tokens} is invalid: generate at least one token")
    prompt_token_cap(None, max_new_tokens, max_prompt_tokens)  # max_prompt_tokens >= 1
    if not isinstance(model, LoadedModel) and on_stage:
        on_stage(f"loading {model}", None)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device=device, dtype=dtype)
    k = default_repeat(loaded) if repeat is None else repeat
    first = (k > 1) if question_first is None else question_first
    template = JRTPrompt(repeat=k, question_first=first, separator=separator)
    # Every model has a prompt-token cap (its config's positions, else DEFAULT_MAX_PROMPT_TOKENS):
    # a context over it is cut, never handed whole to the model.
    limit = prompt_token_cap(loaded.token_limit(), max_new_tokens, max_prompt_tokens)
    fitted = template.fit(context, question, loaded.tokenizer, limit)
    prompt = fitted.text
    warnings = []
    n_prompt = fitted.prompt_tokens
    trained = trained_tokens(loaded)
    if trained and n_prompt > trained:
        warnings.append(
            f"the prompt is {n_prompt} tokens, longer than the {trained} tokens {loaded.name} was trained on: "
            "expect slow, unreliable answers (pass a shorter context or max_prompt_tokens)"
        )
    for warning in warnings:
        if on_warning:
            on_warning(warning)
    if on_stage:
        on_stage(f"reading {n_prompt} prompt tokens and generating up to {max_new_tokens}", n_prompt)
    if mode == "reference":
        answer = generate_like_harness(loaded, [prompt], max_new_tokens=max_new_tokens)[0]
    else:
        answer = generate_loaded(loaded, [prompt], max_new_tokens=max_new_tokens, stop=stop)[0]
    return RunResult(loaded.name, loaded.family, prompt, answer, k, first, fitted, tuple(warnings))


def run_questions(
    context: str,
    questions: list[str],
    *,
    model: str | LoadedModel = DEFAULT_MODEL,
    repeat: int | None = None,
    question_first: bool | None = None,
    separator: str = "\n",
    max_new_tokens: int = 48,
    max_prompt_tokens: int | None = None,
    stop: tuple[str, ...] = ("\n",),
    device: str = "auto",
    dtype: str | None = None,
    mode: str = "default",
    reuse_state: bool = True,
    on_stage: Callable[[str, int | None], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> list[RunResult]:
    """Answer several questions about one context (one :class:`RunResult` each, in order).

    In the context-first layout (``question_first=False``) with ``reuse_state`` on, the model
    reads the context once and answers every question from a copy of its state
    (:func:`jrt_prompt.generation.reuse.read_document`); the context is cut, where it must be, to
    fit the longest question, so that every prompt shares it. Otherwise (question first, the
    default for repeat > 1, or the reference mode) every question reads its whole prompt.
    """
    if isinstance(questions, str):
        questions = [questions]
    if not questions:
        raise JRTArgumentError("no question given: pass at least one question")
    if len(questions) == 1 or mode == "reference":
        if len(questions) > 1 and not isinstance(model, LoadedModel):
            for q in questions:  # check every question before loading the model
                JRTPrompt.plain(separator).render("", q)
            if on_stage:
                on_stage(f"loading {model}", None)
            model = load_model(model, device=device, dtype=dtype)
        return [
            run_prompt(
                context,
                q,
                model=model,
                repeat=repeat,
                question_first=question_first,
                separator=separator,
                max_new_tokens=max_new_tokens,
                max_prompt_tokens=max_prompt_tokens,
                stop=stop,
                device=device,
                dtype=dtype,
                mode=mode,
                on_stage=on_stage,
                on_warning=on_warning,
            )
            for q in questions
        ]
    for q in questions:
        JRTPrompt.plain(separator).render("", q)
    if not isinstance(model, LoadedModel) and on_stage:
        on_stage(f"loading {model}", None)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device=device, dtype=dtype)
    k = default_repeat(loaded) if repeat is None else repeat
    first = (k > 1) if question_first is None else question_first
    template = JRTPrompt(repeat=k, question_first=first, separator=separator)
    limit = prompt_token_cap(loaded.token_limit(), max_new_tokens, max_prompt_tokens)
    count = lambda text: len(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    longest = max(questions, key=count)
    fitted = template.fit(context, longest, loaded.tokenizer, limit)
    kept = fitted.context
    prompts = [template.render(kept, q) for q in questions]
    warnings = []
    trained = trained_tokens(loaded)
    n_prompt = max(count(p) for p in prompts)
    if trained and n_prompt > trained:
        warnings.append(
            f"the prompt is {n_prompt} tokens, longer than the {trained} tokens {loaded.name} was trained on: "
            "expect slow, unreliable answers (pass a shorter context or max_prompt_tokens)"
        )
    for warning in warnings:
        if on_warning:
            on_warning(warning)
    if on_stage:
        on_stage(f"reading {n_prompt} prompt tokens and answering {len(questions)} questions", n_prompt)
    if template.reusable and reuse_state:
        from .generation.reuse import read_document

        state = read_document(loaded, kept, k, prompt=template)
        answers = state.ask(questions, max_new_tokens=max_new_tokens, stop=stop)
    else:
        answers = generate_loaded(loaded, prompts, max_new_tokens=max_new_tokens, stop=stop)
    results = []
    for prompt, answer in zip(prompts, answers, strict=True):
        results.append(
            RunResult(loaded.name, loaded.family, prompt, answer, k, first, fitted, tuple(warnings))
        )
    return results
