"""The shipped demo model: loads offline through the project's loader and answers its example."""

from __future__ import annotations

from pathlib import Path

import pytest

from jrt_prompt import JRTPrompt, load_model
from jrt_prompt.synthetic import read_jsonl

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "jrt_prompt" / "demo"
EXAMPLE = ROOT / "examples" / "record.txt"
QUESTION, ANSWER = "What is the birthplace?", "Seoul"


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


def test_demo_answers_the_example_in_both_forms(demo):
    context = EXAMPLE.read_text().strip()
    assert ANSWER in context
    prompts = [JRTPrompt.plain().render(context, QUESTION), JRTPrompt(repeat=2).render(context, QUESTION)]
    answers = [g.text.strip() for g in demo.generate(prompts, max_new_tokens=12)]
    assert answers == [ANSWER, ANSWER]


def test_demo_recalls_held_out_documents(demo):
    rows = read_jsonl(DEMO / "kv_docs_heldout.jsonl")[:24]
    for template in (JRTPrompt.plain(), JRTPrompt(repeat=2)):
        prompts = [template.render(r["context"], r["question"]) for r in rows]
        answers = [g.text.strip() for g in demo.generate(prompts, max_new_tokens=12)]
        right = sum(a == r["answers"][0] for a, r in zip(answers, rows, strict=True))
        assert right >= 20, (template, right)  # about 98% measured on all 200 rows
