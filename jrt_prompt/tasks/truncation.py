"""The paper's context-length truncation ("--cutting_context"), reproduced step by step.

For every document the context field is cut to a window of ``context_length - answer_length``
tokens of the model's tokenizer, centred on the first occurrence of the gold answer, before the
prompt is built. The prompt is built from the cut document, so the question is never cut and both
copies of a twice prompt are the same cut text.

Harness behaviour kept on purpose (see docs/evaluation.md):
- a document whose label (first element when a list) is empty or a single character is skipped;
- the answer position is the earliest case-insensitive occurrence of any label; ``alt_answers``
  are tried (first one found wins) only when no label occurs;
- with no answer keys (DROP, TriviaQA) the window starts at the beginning of the document;
- when the answer is not found, the position is the token count of the context minus its last
  character, so the window ends at the end of the document (and holds only about half the budget);
  NQ rows then use their ``tok_pos`` field when that count exceeds the budget;
- the window is not shifted back when it runs past the end of the document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Truncation:
    """Result for one document: ``doc`` is the cut copy, or None when the document is skipped."""

    doc: dict[str, Any] | None
    skip_reason: str | None = None
    answer_found: bool = True
    start: int = 0
    end: int = 0
    total_tokens: int = 0


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _earliest(labels, context: str) -> int:
    pos = -1
    for label in labels:
        match = re.search(re.escape(label), context, re.IGNORECASE)
        if match and (pos == -1 or match.start() < pos):
            pos = match.start()
    return pos


def truncate_context(
    doc: dict[str, Any],
    tokenizer,
    *,
    context_key: str,
    answer_keys: tuple[str, ...],
    context_length: int = 1000,
    answer_length: int = 50,
) -> Truncation:
    """Cut ``doc[context_key]`` to the paper's answer-centred window of ``context_length - answer_length`` tokens."""
    desired = context_length - answer_length
    if desired <= 0:
        from jrt_prompt.errors import JRTError

        raise JRTError(
            f"context_length={context_length} must exceed answer_length={answer_length}; raise --context-length"
        )
    context = str(doc[context_key]).strip()
    tokens = _encode(tokenizer, context)

    labels = []
    for key in answer_keys:
        label = doc[key]
        if isinstance(label, list):
            label = label[0] if label else ""
        label = str(label)
        if len(label) <= 1:
            return Truncation(None, skip_reason=f"label {key}={label!r} has at most one character")
        labels.append(label)

    answer_pos = _earliest(labels, context)
    if answer_pos < 0 and doc.get("alt_answers"):
        for alt in doc["alt_answers"]:
            answer_pos = _earliest([alt], context)
            if answer_pos >= 0:
                break
    if not answer_keys:
        answer_pos = 0
    found = answer_pos >= 0

    # answer_pos == -1 slices off the last character: the harness's "answer at the end" fallback.
    prefix_tokens = len(_encode(tokenizer, context[:answer_pos]))
    answer_tok = prefix_tokens
    if not found and doc.get("tok_pos") is not None and prefix_tokens > desired:
        answer_tok = int(doc["tok_pos"])

    start = max(0, answer_tok - desired // 2)
    end = min(len(tokens), answer_tok + desired - (answer_tok - start))
    cut = dict(doc)
    cut[context_key] = tokenizer.decode(tokens[start:end], skip_special_tokens=True)
    return Truncation(cut, answer_found=found, start=start, end=end, total_tokens=len(tokens))
