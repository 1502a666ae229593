"""JRT-Prompt templaters.

A recurrent LM reads its prompt once, left to right, into a fixed-size state: what it keeps of the
context depends on whether it already knows the question. JRT-Prompt shows the context ``k`` times
(and, by default, the question once before the context as well), so the state sees every part of
the context after having seen everything else once.

Layout of :meth:`JRTPrompt.render` (``sep`` is :attr:`JRTPrompt.separator`)::

    [question + sep]            if question_first
    context (+ sep + context) * (k - 1)
    sep + question + answer_prefix

With ``repeat=1`` and ``question_first=False`` this is exactly the plain prompt
``context + sep + question + answer_prefix``.

Two layouts: *question-first* (the paper's JRT-Prompt, the default when ``repeat > 1``) and
*context-first* (``question_first=False``: ``context × k`` then the question). Only the second
shares its text before the question between the questions of one document, so only it lets a
recurrent model read the document once and answer many questions from copies of its state
(:meth:`JRTPrompt.prefix` + :meth:`JRTPrompt.suffix` is the rendered prompt).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import JRTArgumentError

# Prompt tokens a model without a position limit in its config (recurrent models, the demo) reads
# at most, unless told otherwise (--max-prompt-tokens). Sized for the roster's 1.3B-class models on
# one GPU: transformers' Mamba path without mamba-ssm kernels holds d_inner x d_state floats per
# token (4096 x 16 x 4 bytes = 256 KiB for mamba-1.4b), i.e. 8 GiB for one 32k-token row.
DEFAULT_MAX_PROMPT_TOKENS = 32_768

LAYOUTS = ("question-first", "context-first")

# Texts longer than this many characters are measured by prefixes first (see count_tokens_upto).
PROBE_CHARS = 1 << 16
# Tokens a cut at the end of a prefix (or between two copies of a context) can add or merge away.
SEAM_TOKENS = 16


def prompt_token_cap(positions: int | None, max_new_tokens: int, override: int | None = None) -> int:
    """The most prompt tokens a model may read: ``override`` when given, else the positions its
    config declares minus the tokens to generate, else :data:`DEFAULT_MAX_PROMPT_TOKENS`."""
    if override is not None:
        if isinstance(override, bool) or not isinstance(override, int) or override < 1:
            raise JRTArgumentError(
                f"max_prompt_tokens={override!r} is invalid: use a positive number of tokens"
            )
        return override
    if positions:
        return max(1, positions - max_new_tokens)
    return DEFAULT_MAX_PROMPT_TOKENS


def count_tokens_upto(count: Callable[[str], int], text: str, cap: int) -> int | None:
    """The token count of ``text``, or None when it certainly holds more than ``cap`` tokens.

    A long text is measured by prefixes of growing length (x4 each time) first, so a text far over
    the cap is never tokenized whole: time and memory stay proportional to the cap, not the text.
    """
    size = PROBE_CHARS
    while size < len(text):
        if count(text[:size]) > cap + SEAM_TOKENS:
            return None
        size *= 4
    return count(text)


def count_tokens_chunked(count: Callable[[str], int], text: str) -> int:
    """Token count of a text of any length, in bounded memory: the text is cut before a space every
    :data:`PROBE_CHARS` characters or so (where byte-level BPE starts a new token anyway)."""
    total, start = 0, 0
    while start < len(text):
        end = min(len(text), start + PROBE_CHARS)
        if end < len(text):
            space = text.rfind(" ", start + PROBE_CHARS // 2, end)
            end = space if space > start else end
        total += count(text[start:end])
        start = end
    return total


@dataclass(frozen=True)
class JRTPrompt:
    """How to lay out a context and a question for a recurrent LM.

    repeat: how many copies of the context (k >= 1); the paper's JRT-Prompt uses 2.
    question_first: also place the question before the first copy of the context; None (the
        default) means ``repeat > 1``, as on the command line: ``JRTPrompt(repeat=1)`` is the plain
        prompt and ``JRTPrompt()`` (repeat 2) the paper's JRT prompt.
    separator: text between the question, the copies of the context and the final question.
    answer_prefix: text after the final question (e.g. ``" Answer:"``); empty by default.
    """

    repeat: int = 2
    question_first: bool | None = None
    separator: str = "\n"
    answer_prefix: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.repeat, int) or isinstance(self.repeat, bool) or self.repeat < 1:
            raise JRTArgumentError(
                f"repeat={self.repeat!r} is invalid: the context must be shown at least once (use repeat >= 1)"
            )
        if not isinstance(self.separator, str) or not isinstance(self.answer_prefix, str):
            raise JRTArgumentError("separator and answer_prefix must be strings")
        if self.question_first is None:
            object.__setattr__(self, "question_first", self.repeat > 1)
        elif not isinstance(self.question_first, bool):
            raise JRTArgumentError(
                f"question_first={self.question_first!r} is invalid: use True, False or None"
            )

    @classmethod
    def context_first(cls, repeat: int = 2, separator: str = "\n", answer_prefix: str = "") -> JRTPrompt:
        """The reusable layout: ``context × repeat``, then the question. Everything before the
        question is the same for every question of a document, so a recurrent model can read it
        once and branch its state per question (:func:`jrt_prompt.generation.reuse.read_document`)."""
        return cls(repeat=repeat, question_first=False, separator=separator, answer_prefix=answer_prefix)

    @classmethod
    def from_layout(
        cls, layout: str, repeat: int = 2, separator: str = "\n", answer_prefix: str = ""
    ) -> JRTPrompt:
        """The templater of a named layout: ``"question-first"`` (the paper's JRT-Prompt) or
        ``"context-first"`` (reusable)."""
        if layout not in LAYOUTS:
            raise JRTArgumentError(f"layout {layout!r} is unknown: use one of {', '.join(LAYOUTS)}")
        return cls(
            repeat=repeat,
            question_first=layout == "question-first",
            separator=separator,
            answer_prefix=answer_prefix,
        )

    @property
    def layout(self) -> str:
        """``"question-first"`` or ``"context-first"`` (``repeat=1`` context-first is the plain prompt)."""
        return "question-first" if self.question_first else "context-first"

    @property
    def reusable(self) -> bool:
        """Whether every question of one context shares the prompt's text before the question."""
        return not self.question_first

    def prefix(self, context: str) -> str:
        """The question-independent start of a reusable prompt: ``(context + sep) × repeat``;
        ``prefix(context) + suffix(question) == render(context, question)``."""
        if not self.reusable:
            raise JRTArgumentError(
                "the question-first layout puts the question before the context, so no prefix is shared "
                "between questions: use JRTPrompt.context_first(repeat) to reuse a document's state"
            )
        if not isinstance(context, str):
            raise JRTArgumentError(f"context must be a string, got {type(context).__name__}")
        return (context + self.separator) * self.repeat

    def suffix(self, question: str) -> str:
        """What a reusable prompt adds after its prefix: the question and the answer prefix."""
        _check_question(question)
        return question + self.answer_prefix

    @classmethod
    def plain(cls, separator: str = "\n", answer_prefix: str = "") -> JRTPrompt:
        """The default (non-JRT) prompt: the context once, then the question."""
        return cls(repeat=1, question_first=False, separator=separator, answer_prefix=answer_prefix)

    def render(self, context: str, question: str) -> str:
        """The prompt text for one context and question."""
        _check_question(question)
        if not isinstance(context, str):
            raise JRTArgumentError(f"context must be a string, got {type(context).__name__}")
        parts = []
        if self.question_first:
            parts.append(question)
        parts.extend([context] * self.repeat)
        parts.append(question)
        return self.separator.join(parts) + self.answer_prefix

    def fit(self, context: str, question: str, tokenizer: Any, max_tokens: int) -> FittedPrompt:
        """Render a prompt of at most ``max_tokens`` tokens by shortening the context.

        The question is never cut. Every copy of the context is the same token sequence: the
        context is tokenized once, cut to a whole number of tokens, decoded, and the copies are
        that same text. Because the prompt is tokenized as a whole afterwards, text at the seams
        (separator, question) can merge into neighbouring tokens; the fitter measures the final
        prompt and cuts further until it fits.
        """
        return fit_prompt(self, context, question, tokenizer, max_tokens)


@dataclass(frozen=True)
class FittedPrompt:
    """A prompt that fits a token budget, and what was cut to make it fit."""

    text: str
    context: str
    prompt_tokens: int
    context_tokens: int
    original_context_tokens: int

    @property
    def cut_tokens(self) -> int:
        """Tokens removed from (one copy of) the context."""
        return self.original_context_tokens - self.context_tokens

    @property
    def truncated(self) -> bool:
        return self.cut_tokens > 0


def fit_prompt(
    template: JRTPrompt,
    context: str,
    question: str,
    tokenizer: Any,
    max_tokens: int,
    *,
    keep: str = "start",
) -> FittedPrompt:
    """Shorten ``context`` (never ``question``) so ``template.render`` fits ``max_tokens`` tokens.

    keep: which part of the context survives a cut, ``"start"`` (drop the end) or ``"end"``.
    """
    _check_question(question)
    if keep not in ("start", "end"):
        raise JRTArgumentError(f"keep={keep!r} is invalid: use 'start' or 'end'")
    if max_tokens < 1:
        raise JRTArgumentError(f"token budget {max_tokens} is invalid: use a positive number of tokens")
    if template.repeat > max_tokens:
        raise JRTArgumentError(
            f"repeat={template.repeat} shows the context more times than the token budget of {max_tokens} "
            "has tokens: lower the repeat or raise the budget"
        )

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    if count_tokens_upto(count, question, max_tokens) is None:
        raise JRTArgumentError(
            f"token budget {max_tokens} is smaller than the question alone: raise the budget or shorten the question"
        )
    fixed = count(template.render("", question))
    if fixed > max_tokens:
        raise JRTArgumentError(
            f"token budget {max_tokens} is smaller than the question and layout alone ({fixed} tokens): "
            "raise the budget or shorten the question"
        )
    # A context far over the budget is cut to a prefix (suffix) that still holds more than one
    # copy's share before it is tokenized, so its length never drives time or memory.
    per_copy = (max_tokens - fixed) // template.repeat + SEAM_TOKENS
    original: int | None = None
    if len(context) > PROBE_CHARS:
        size = PROBE_CHARS
        while size < len(context):
            piece = context[:size] if keep == "start" else context[len(context) - size :]
            if count(piece) > per_copy + SEAM_TOKENS:
                original = count_tokens_chunked(count, context)
                context = piece
                break
            size *= 4
    ids = tokenizer(context, add_special_tokens=False, verbose=False)["input_ids"]
    n_ids = len(ids)
    if original is None:
        original = n_ids
    full = template.render(context, question)
    n_full = count(full)
    if n_full <= max_tokens:
        return FittedPrompt(full, context, n_full, n_ids, original)

    # First guess: share the free budget equally between the copies, then shrink until it fits.
    keep_n = max(0, min(n_ids, (max_tokens - fixed) // template.repeat))
    while True:
        piece = ids[:keep_n] if keep == "start" else ids[n_ids - keep_n :]
        cut_context = tokenizer.decode(piece, skip_special_tokens=True) if keep_n else ""
        text = template.render(cut_context, question)
        n = count(text)
        if n <= max_tokens or keep_n == 0:
            break
        # Shrink by what is over budget, spread over the copies (at least one token).
        keep_n = max(0, keep_n - max(1, -(-(n - max_tokens) // template.repeat)))
    # Report the context length as the tokenizer sees the decoded cut (byte-level BPE round-trips).
    return FittedPrompt(text, cut_context, n, count(cut_context) if keep_n else 0, original)


def _check_question(question: Any) -> None:
    if not isinstance(question, str):
        raise JRTArgumentError(f"question must be a string, got {type(question).__name__}")
    if not question.strip():
        raise JRTArgumentError("question is empty: pass the question to ask about the context")
