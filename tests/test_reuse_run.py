"""`jrt run` with several questions: one answer per question, the context read once when reusable."""

import json

import pytest
from typer.testing import CliRunner

from jrt_prompt import load_model
from jrt_prompt.generation import reuse
from jrt_prompt.run import run_prompt, run_questions

QUESTIONS = ["What is the garden?", "What is the parcel?", "Who is the easel?"]


@pytest.fixture(scope="module")
def demo():
    return load_model("demo", device="cpu")


@pytest.mark.parametrize("question_first", [False, True])
def test_several_questions_equal_each_asked_alone(demo, question_first, monkeypatch):
    context = open("examples/record.txt").read()
    reads = []
    original = reuse.read_document
    monkeypatch.setattr(reuse, "read_document", lambda *a, **k: reads.append(1) or original(*a, **k))
    results = run_questions(context, QUESTIONS, model=demo, question_first=question_first, max_new_tokens=12)
    alone = [
        run_prompt(context, q, model=demo, question_first=question_first, max_new_tokens=12)
        for q in QUESTIONS
    ]
    got = [(r.prompt, r.answer.text, r.answer.prompt_tokens, r.answer.answer_tokens) for r in results]
    assert got == [(r.prompt, r.answer.text, r.answer.prompt_tokens, r.answer.answer_tokens) for r in alone]
    assert len(reads) == (0 if question_first else 1)


def test_cli_prints_one_answer_per_question():
    from cli.main import app

    args = ["run", "--context", "examples/record.txt", "--device", "cpu", "--json", "--no-question-first"]
    for q in QUESTIONS:
        args += ["--question", q]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 3 and all(not line["question_first"] for line in lines)
