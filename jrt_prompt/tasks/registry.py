"""The evaluation tasks as data: dataset, fields, prompt builder, gold labels, truncation keys.

This module imports the task definitions and registers them; no task module imports it back.
"""

from __future__ import annotations

from jrt_prompt.errors import JRTArgumentError

from . import formats
from .kv_docs import KV_DOCS
from .spec import TaskSpec


def _value_gold(doc: dict) -> list[str]:
    return [str(doc["value"])]


def _answers_gold(doc: dict) -> list[str]:
    answers = doc["answers"]
    if isinstance(answers, str):
        return [answers]
    return [str(a) for a in answers]


TASKS: dict[str, TaskSpec] = {}


def _add(spec: TaskSpec) -> None:
    TASKS[spec.name] = spec


_add(
    TaskSpec(
        name="swde",
        hub_id="hazyresearch/based-swde-v2",
        hub_config="default",
        split="validation",
        fields=("text", "key", "value"),
        twice_fields=(),
        prompt=formats.swde_prompt,
        gold=_value_gold,
        context_key="text",
        answer_keys=("key", "value"),
        paper_name="based_swde",
        description="attribute extraction from web pages",
    )
)
_add(
    TaskSpec(
        name="fda",
        hub_id="hazyresearch/based-fda",
        hub_config="default",
        split="validation",
        fields=("text", "key", "value"),
        twice_fields=(),
        prompt=formats.fda_prompt,
        gold=_value_gold,
        context_key="text",
        answer_keys=("key", "value"),
        paper_name="based_fda",
        description="attribute extraction from FDA device reports",
    )
)
_add(
    TaskSpec(
        name="squad",
        hub_id="hazyresearch/based-squad",
        hub_config="default",
        split="validation",
        fields=("text", "value"),
        twice_fields=("context", "question"),
        prompt=formats.squad_prompt,
        gold=_value_gold,
        context_key="text",
        answer_keys=("value",),
        paper_name="based_squad",
        description="SQuAD in completion (cloze) form",
    )
)
_add(
    TaskSpec(
        name="triviaqa",
        hub_id="hazyresearch/based_triviaqa",
        hub_config=None,
        split="validation",
        fields=("context", "question", "answers"),
        twice_fields=("orig_question",),
        prompt=formats.triviaqa_prompt,
        gold=_answers_gold,
        context_key="context",
        answer_keys=(),
        paper_name="based_triviaqa",
        description="TriviaQA with its evidence passage",
    )
)
_add(
    TaskSpec(
        name="drop",
        hub_id="hazyresearch/based_drop",
        hub_config=None,
        split="validation",
        fields=("context", "question", "answers"),
        twice_fields=("orig_question",),
        prompt=formats.drop_prompt,
        gold=_answers_gold,
        context_key="context",
        answer_keys=(),
        paper_name="based_drop",
        description="DROP reading comprehension",
    )
)
for _size in (512, 1024, 2048):
    _add(
        TaskSpec(
            name=f"nq{_size}",
            hub_id=f"hazyresearch/based_nq_{_size}",
            hub_config=None,
            split="validation",
            fields=("context", "question", "answers"),
            twice_fields=("orig_question",),
            prompt=formats.nq_prompt,
            gold=_answers_gold,
            context_key="context",
            answer_keys=("answers",),
            paper_name=f"based_nq_{_size}",
            description=f"Natural Questions, ~{_size}-token documents",
        )
    )

_add(KV_DOCS)

# The six paper tasks, in the order of the paper's tables (NQ at 1024 tokens by default).
PAPER_TASKS = ("swde", "fda", "squad", "triviaqa", "drop", "nq1024")

_ALIASES = {
    "nq": "nq1024",
    "nq_512": "nq512",
    "nq_1024": "nq1024",
    "nq_2048": "nq2048",
    "squad_completion": "squad",
    "kv_docs": "kv-docs",
}


def get_task(name: str) -> TaskSpec:
    """The task called ``name`` (also accepts the harness names, e.g. ``based_swde``)."""
    key = name.strip().lower()
    if key.startswith("based_"):
        key = key[len("based_") :]
    if key.endswith("_twice"):
        raise JRTArgumentError(f"task {name!r}: pick the form with --repeat 2 instead of the _twice suffix")
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise JRTArgumentError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[key]


def expand_tasks(names) -> list[str]:
    """Task names with ``paper`` expanded to the six tasks of the paper's Table 1, duplicates dropped."""
    out: list[str] = []
    for name in names:
        group = PAPER_TASKS if name.strip().lower() in ("paper", "table1") else (get_task(name).name,)
        out += [n for n in group if n not in out]
    return out


def register(spec: TaskSpec) -> None:
    """Add a task of your own (``jrt_prompt.tasks.TaskSpec``) under ``spec.name``."""
    _add(spec)
