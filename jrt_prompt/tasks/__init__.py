"""Evaluation tasks: the paper's six recall tasks (+ NQ sizes) and the synthetic kv-docs task.

from jrt_prompt.tasks import get_task, build_examples
spec = get_task("swde")
examples = build_examples(spec, rows, repeat=2, tokenizer=tok, context_length=1000)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .metrics import METRIC_NAMES, aggregate, contains, exact_match, mean_scores, score, token_f1
from .registry import PAPER_TASKS, TASKS, TaskSpec, expand_tasks, get_task
from .truncation import Truncation, truncate_context

__all__ = [
    "METRIC_NAMES",
    "aggregate",
    "PAPER_TASKS",
    "TASKS",
    "TaskExample",
    "TaskSpec",
    "Truncation",
    "build_examples",
    "contains",
    "exact_match",
    "expand_tasks",
    "get_task",
    "mean_scores",
    "score",
    "token_f1",
    "truncate_context",
]


@dataclass(frozen=True)
class TaskExample:
    """One prompt to generate from: ``index`` is the row's position in the task data."""

    index: int
    prompt: str
    answers: list[str]
    truncated: bool = False
    skip_reason: str | None = None


def build_examples(
    spec: TaskSpec,
    rows: list[dict[str, Any]],
    repeat: int,
    *,
    tokenizer=None,
    context_length: int | None = 1000,
    answer_length: int = 50,
) -> list[TaskExample]:
    """Prompts and gold labels for every row; skipped rows carry ``skip_reason`` and no prompt.

    ``context_length`` None turns the paper's truncation off (the whole document is used).
    """
    examples = []
    for index, row in enumerate(rows):
        doc = dict(row)
        truncated = False
        if context_length is not None and spec.truncate:
            if tokenizer is None:
                raise ValueError("truncation needs the model's tokenizer")
            cut = truncate_context(
                doc,
                tokenizer,
                context_key=spec.context_key,
                answer_keys=spec.answer_keys,
                context_length=context_length,
                answer_length=answer_length,
            )
            if cut.doc is None:
                examples.append(TaskExample(index, "", spec.gold(doc), skip_reason=cut.skip_reason))
                continue
            truncated = cut.start > 0 or cut.end < cut.total_tokens
            doc = cut.doc
        examples.append(TaskExample(index, spec.prompt(doc, repeat), spec.gold(doc), truncated=truncated))
    return examples
