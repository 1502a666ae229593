"""The shipped demo model: loads offline through the project's loader and answers its example."""

from __future__ import annotations

from pathlib import Path

import pytest

from jrt_prompt import JRTPrompt, load_model
from jrt_prompt.generation import generate_loaded
from jrt_prompt.synthetic import read_jsonl

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "jrt_prompt" / "demo"
EXAMPLE = ROOT / "examples" / "record.txt"
QUESTION, ANSWER = "What is the garden?", "guava"


@pytest.fixture(scope="module")
def demo():
    try:
        return load_model("demo")
    except Exception:  # the roster entry may be absent; the folder is the same checkpoint
        return load_model(str(DEMO))


def test_demo_files_ship_and_stay_small():
    for name in ("config.json", "model.safetensors", "tokenizer.json", "kv_docs_heldout.jsonl"):
        assert (DEMO / name).is_file(), name
    assert (DEMO / "model.safetensors").stat().st_size <= 20_000_000
    rows = read_jsonl(DEMO / "kv_docs_heldout.jsonl")
    assert len(rows) >= 100 and all(len(r["answers"]) == 1 for r in rows)


def test_demo_answers_the_example_when_it_reads_twice(demo):
    """The shipped example is a record whose first facts the small state loses in one read: the
    JRT prompt (question up front, record twice) recovers the value, the default prompt does not."""
    context = EXAMPLE.read_text().strip()
    assert ANSWER in context
    prompts = [JRTPrompt(repeat=2).render(context, QUESTION), JRTPrompt.plain().render(context, QUESTION)]
    jrt, default = [g.text.strip() for g in generate_loaded(demo, prompts, max_new_tokens=12)]
    assert jrt == ANSWER
    assert default != ANSWER


def test_demo_recalls_more_held_out_documents_when_it_reads_twice(demo):
    rows = read_jsonl(DEMO / "kv_docs_heldout.jsonl")[:64]
    right = {}
    for name, template in (("default", JRTPrompt.plain()), ("jrt", JRTPrompt(repeat=2))):
        prompts = [template.render(r["context"], r["question"]) for r in rows]
        answers = [g.text.strip() for g in generate_loaded(demo, prompts, max_new_tokens=12)]
        right[name] = sum(a == r["answers"][0] for a, r in zip(answers, rows, strict=True))
    # measured on all 200 rows (`jrt eval --model demo --task kv-docs --repeat 1 --repeat 2`):
    # 68.5 % default, 82.0 % JRT; on these 64 rows the gap must still be clear
    assert right["jrt"] >= right["default"] + 4, right
    assert right["default"] >= 20, right  # far above chance (guessing a value of the record)
