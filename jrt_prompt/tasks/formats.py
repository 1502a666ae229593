"""The prompt strings of the paper's six recall tasks, default form and JRT ("twice") form.

Each builder takes one dataset row (a dict with the dataset's own fields) and ``repeat``: 1 gives
the default prompt, 2 the paper's twice prompt, and k > 2 repeats the context copy k times in the
same layout (an extension; the paper only ran k = 2). The strings reproduce the evaluation harness
of the paper character for character, including its odd corners (which of ``strip``/``strip('.')``
runs in which order, case-sensitive vs case-insensitive removal of a question repeated at the end
of the context); see docs/evaluation.md.

The twice form of every task is ``{intro} {copy}\\n{copy} {question}`` except SQuAD, whose first
copy is the untruncated ``context`` field cut before "Question:" and whose last copy is the full
``text`` (which already ends in the question).
"""

from __future__ import annotations

import re

from jrt_prompt.errors import JRTError

SWDE_SUMMARY_MARKER = "Summary of information above..."
_TRIVIAQA_MARKUP = re.compile(r"\[PAR\]|\[DOC\]|\[TLE\]")


def _check_repeat(repeat: int) -> None:
    if repeat < 1:
        raise JRTError(f"repeat={repeat} is not allowed; use 1 (default prompt) or 2 (JRT prompt)")


def _repeated(intro: str, copy: str, question: str, repeat: int) -> str:
    """``{intro} {copy}\\n{copy}...\\n{copy} {question}`` with ``repeat`` copies."""
    return f"{intro} " + "\n".join([copy] * repeat) + f" {question}"


def _strip_suffix_repeats(text: str, suffix: str) -> str:
    """Remove ``suffix`` from the end of ``text`` as long as it is there, ignoring case."""
    if not suffix:  # an empty suffix always "matches"; stop instead of looping forever
        return text
    while text.lower().endswith(suffix.lower()):
        text = text[: -len(suffix)]
    return text


def _capitalized(key: str) -> str:
    return key[:1].upper() + key[1:]


# --- SWDE and FDA: attribute extraction from web pages / FDA reports ---------------------------


def swde_prompt(doc: dict, repeat: int = 1) -> str:
    """SWDE: the page text, then the capitalised attribute name and a colon."""
    _check_repeat(repeat)
    text = doc["text"]
    # The dataset text carries a "Summary of information above..." tail; the prompt drops it.
    while SWDE_SUMMARY_MARKER in text:
        text = text.split(SWDE_SUMMARY_MARKER)[0]
    key = doc["key"]
    text = _strip_suffix_repeats(text, key + ":")
    question = _capitalized(key) + ":"
    if repeat == 1:
        return text.strip("\n").strip().strip("\n").strip().strip(".") + ". " + question
    body = text.strip("\n").strip(".").strip().strip("\n").strip()
    if not body.endswith("."):
        body += "."
    return _repeated(f"Information about {question.strip(':')}.", body, question, repeat)


def fda_prompt(doc: dict, repeat: int = 1) -> str:
    """FDA: the report text, then the capitalised attribute name and a colon."""
    _check_repeat(repeat)
    key = doc["key"]
    text = _strip_suffix_repeats(doc["text"], key + ":")
    question = _capitalized(key) + ":"
    # FDA strips newlines and dots but not spaces (unlike SWDE).
    body = text.strip("\n").strip(".")
    if not body.endswith("."):
        body += "."
    if repeat == 1:
        return body + " " + question
    return _repeated(f"Information about {question.strip(':')}.", body, question, repeat)


# --- SQuAD in completion form ------------------------------------------------------------------


def squad_prompt(doc: dict, repeat: int = 1) -> str:
    """SQuAD completion: ``text`` already ends in the cloze; the twice form puts the question first."""
    _check_repeat(repeat)
    text = doc["text"].strip()
    if repeat == 1:
        return text
    context = doc["context"].split("Question:")[0]
    return doc["question"] + " " + "\n".join([context] * (repeat - 1) + [text])


# --- DROP, TriviaQA, NQ: passage + question ----------------------------------------------------


def drop_prompt(doc: dict, repeat: int = 1) -> str:
    """DROP: passage, then question; twice form opens with ``orig_question`` (colons stripped)."""
    _check_repeat(repeat)
    question = doc["question"].strip()
    context = _strip_suffix_repeats(doc["context"].strip(), question)
    if repeat == 1:
        return context.strip().strip(".") + ". " + question
    body = context.strip().strip(".").strip() + "."
    return _repeated(doc["orig_question"].strip(":"), body, question, repeat)


def triviaqa_prompt(doc: dict, repeat: int = 1) -> str:
    """TriviaQA: as DROP after deleting [PAR]/[DOC]/[TLE]; ``orig_question`` is used as is."""
    _check_repeat(repeat)
    question = doc["question"].strip()
    context = _TRIVIAQA_MARKUP.sub("", doc["context"].strip())
    context = _strip_suffix_repeats(context, question)
    if repeat == 1:
        return context.strip().strip(".") + ". " + question
    body = context.strip().strip(".").strip() + "."
    return _repeated(doc["orig_question"], body, question, repeat)


def nq_prompt(doc: dict, repeat: int = 1) -> str:
    """NQ: as DROP, but the default form removes a trailing question once and case-sensitively."""
    _check_repeat(repeat)
    question = doc["question"].strip()
    context = doc["context"].strip()
    if repeat == 1:
        if question and context.endswith(question):
            context = context[: -len(question)]
        return context.strip().strip(".") + ". " + question
    context = _strip_suffix_repeats(context, question)
    body = context.strip().strip(".").strip() + "."
    return _repeated(doc["orig_question"].strip(":"), body, question, repeat)
