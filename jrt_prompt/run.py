"""``jrt run``: answer one question about one context with JRT-Prompt."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import JRTError
from .generation import Generation, generate_like_harness
from .models.loading import LoadedModel, load_model
from .prompts import FittedPrompt, JRTPrompt

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


def read_context(value: str) -> str:
    """``value`` is the context text, or the path of a file holding it."""
    if not value or not value.strip():
        raise JRTError("context is empty: pass the document text or a file with --context")
    candidate = Path(value).expanduser()
    looks_like_file = (
        "\n" not in value
        and len(value) < 4096
        and (candidate.suffix in (".txt", ".md", ".json", ".jsonl", ".csv", ".html") or "/" in value)
        and " " not in value.strip()
    )
    try:
        is_file = candidate.is_file()
    except OSError:
        is_file = False
    if is_file:
        try:
            text = candidate.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise JRTError(f"context file {value} is not UTF-8 text: convert it to UTF-8") from None
        if not text.strip():
            raise JRTError(f"context file {value} is empty: put the document text in it")
        return text
    if looks_like_file:
        raise JRTError(
            f"context file {value} does not exist: pass an existing file or the context text itself"
        )
    return value


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
) -> RunResult:
    """Render the JRT prompt for ``context``/``question``, generate the answer greedily, return both.

    mode: ``"default"`` (left padding masked, fp32 states) or ``"reference"`` (the published
    evaluation harness's behaviour, to match the paper's numbers; see docs/inference_modes.md).
    """
    if mode not in ("default", "reference"):
        raise JRTError(f"mode {mode!r} is unknown: use default or reference")
    # Check the options before spending time on loading the model.
    JRTPrompt(repeat=1 if repeat is None else repeat, separator=separator).render(context, question)
    if max_new_tokens < 1:
        raise JRTError(f"max_new_tokens={max_new_tokens} is invalid: generate at least one token")
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device=device, dtype=dtype)
    k = default_repeat(loaded) if repeat is None else repeat
    first = (k > 1) if question_first is None else question_first
    template = JRTPrompt(repeat=k, question_first=first, separator=separator)
    limit = max_prompt_tokens
    if limit is None:
        positions = loaded.token_limit()
        limit = positions - max_new_tokens if positions and positions > max_new_tokens else None
    fitted = None
    if limit is not None:
        fitted = template.fit(context, question, loaded.tokenizer, limit)
        prompt = fitted.text
    else:
        prompt = template.render(context, question)
    if mode == "reference":
        answer = generate_like_harness(loaded, [prompt], max_new_tokens=max_new_tokens)[0]
    else:
        answer = loaded.generate([prompt], max_new_tokens=max_new_tokens, stop=stop)[0]
    return RunResult(loaded.name, loaded.family, prompt, answer, k, first, fitted)
