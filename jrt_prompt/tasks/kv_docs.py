"""``kv-docs``: the project's synthetic key-value documents as an evaluation task.

Rows have ``context`` (a document of key-value facts), ``question`` (the key asked about) and
``answers``. The default form is the plain prompt ``context\\nquestion``; the JRT form is the
generic templater's ``question\\ncontext\\ncontext\\nquestion`` (:class:`jrt_prompt.JRTPrompt`),
the layouts the demo model was trained on. Data: ``--data PATH``, else the held-out file shipped
with the demo model, else freshly generated examples (fixed seed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jrt_prompt.errors import JRTError
from jrt_prompt.prompts import JRTPrompt

from .spec import TaskSpec

# The same draw the demo package writes to demo/kv_docs_heldout.jsonl (jrt_prompt.synthetic.demo).
HELD_OUT_SEED = 1234
HELD_OUT_ROWS = 200


def kv_docs_prompt(doc: dict, repeat: int = 1) -> str:
    if repeat < 1:
        raise JRTError(f"repeat={repeat} is not allowed; use 1 (default prompt) or 2 (JRT prompt)")
    template = JRTPrompt.plain() if repeat == 1 else JRTPrompt(repeat=repeat, question_first=True)
    return template.render(doc["context"], doc["question"])


def _answers(doc: dict) -> list[str]:
    answers = doc["answers"]
    return [answers] if isinstance(answers, str) else [str(a) for a in answers]


def _shipped_held_out() -> Path | None:
    path = Path(__file__).resolve().parent.parent / "demo" / "kv_docs_heldout.jsonl"
    return path if path.is_file() else None


def _load_default(limit: int | None) -> tuple[list[dict[str, Any]], str]:
    path = _shipped_held_out()
    if path is not None:
        from .data import load_local_rows

        return load_local_rows(path), str(path)
    try:
        from jrt_prompt.synthetic.kv_docs import kv_docs_examples
    except ImportError:
        raise JRTError(
            "task kv-docs: no held-out file ships with the demo model and the synthetic generator is "
            "not installed; pass --data kv-docs=PATH with rows holding context, question, answers"
        ) from None
    n = HELD_OUT_ROWS if limit is None or limit < 0 else limit
    rows = [dict(r) for r in kv_docs_examples(n, seed=HELD_OUT_SEED)]
    return rows, f"generated kv-docs (n={n}, seed={HELD_OUT_SEED})"


KV_DOCS = TaskSpec(
    name="kv-docs",
    hub_id=None,
    hub_config=None,
    split="validation",
    fields=("context", "question", "answers"),
    twice_fields=(),
    prompt=kv_docs_prompt,
    gold=_answers,
    context_key="context",
    answer_keys=(),
    paper_name="kv_docs",
    description="synthetic key-value documents (this project's demo task)",
    truncate=False,
    extra={"loader": _load_default},
)
