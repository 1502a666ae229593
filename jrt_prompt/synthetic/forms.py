"""The three prompt forms every synthetic example can be shown in.

A recall example has a *context* (what must be remembered) and a *query* (what is asked). The
forms differ only in where the query goes and how often the context is read:

- ``default``:        context, query (with answers)
- ``question_first``: query, context, query (with answers)
- ``jrt``:            query, context, context, query (with answers)   -- JRT-Prompt with k=2
- ``context_first``:  context, context, query (with answers)          -- k=2, reusable: the part
  before the query is the same for every query, so one state serves them all (not in the
  default training forms; pass it with ``--form``)

The answers are always written (and scored) in the last copy of the query.
"""

from __future__ import annotations

from enum import StrEnum

from ..errors import JRTError


class PromptForm(StrEnum):
    default = "default"
    question_first = "question_first"
    jrt = "jrt"
    context_first = "context_first"

    @property
    def question_first_flag(self) -> bool:
        return self in (PromptForm.question_first, PromptForm.jrt)

    @property
    def repeat(self) -> int:
        return 2 if self in (PromptForm.jrt, PromptForm.context_first) else 1


ALL_FORMS: tuple[PromptForm, ...] = (PromptForm.default, PromptForm.question_first, PromptForm.jrt)


def parse_form(value: str | PromptForm) -> PromptForm:
    """A :class:`PromptForm` from its name; a one-line error names the accepted ones."""
    if isinstance(value, PromptForm):
        return value
    try:
        return PromptForm(str(value).replace("-", "_"))
    except ValueError:
        names = ", ".join(f.value for f in PromptForm)
        raise JRTError(f"prompt form {value!r} is unknown: use one of {names}") from None


def parse_forms(values) -> tuple[PromptForm, ...]:
    forms = tuple(parse_form(v) for v in values)
    if not forms:
        raise JRTError("no prompt form given: use one or more of default, question_first, jrt, context_first")
    return forms
