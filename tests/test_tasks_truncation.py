"""The paper's context-length truncation and the metrics (byte tokenizer: one token per byte)."""

import pytest

from jrt_prompt.tasks import (
    build_examples,
    contains,
    exact_match,
    get_task,
    score,
    token_f1,
    truncate_context,
)


def cut(doc, tok, keys=("answers",), key="context", c=150, a=50):
    return truncate_context(doc, tok, context_key=key, answer_keys=keys, context_length=c, answer_length=a)


def test_window_is_centred_on_the_answer(byte_tokenizer):
    context = "a" * 500 + "ANSWER" + "b" * 500
    result = cut({"context": f"  {context}\n", "answers": ["answer"]}, byte_tokenizer)
    # desired = 150 - 50 = 100 tokens; answer at 500 -> [450, 550)
    assert (result.start, result.end) == (450, 550)
    assert result.doc["context"] == context[450:550]
    assert result.answer_found


def test_window_near_start_is_not_shifted(byte_tokenizer):
    context = "xx answer " + "z" * 300
    result = cut({"context": context, "answers": ["answer"]}, byte_tokenizer)
    assert (result.start, result.end) == (0, 100)


def test_answer_not_found_takes_the_end_of_the_document(byte_tokenizer):
    context = "".join(chr(ord("a") + i % 26) for i in range(400))
    result = cut({"context": context, "answers": ["NOTTHERE"]}, byte_tokenizer)
    # position = tokens of context[:-1] = 399 -> window [349, 400): about half the budget, at the end
    assert not result.answer_found
    assert (result.start, result.end) == (349, 400)
    assert result.doc["context"] == context[349:]


def test_nq_tok_pos_is_used_when_the_answer_is_missing(byte_tokenizer):
    context = "q" * 400
    result = cut({"context": context, "answers": ["NOTTHERE"], "tok_pos": 120}, byte_tokenizer)
    assert (result.start, result.end) == (70, 170)


def test_alt_answers_are_tried_when_no_label_occurs(byte_tokenizer):
    context = "w" * 300 + "Lisbon" + "w" * 300
    result = cut(
        {"context": context, "answers": ["Porto"], "alt_answers": ["Faro", "lisbon"]}, byte_tokenizer
    )
    assert (result.start, result.end) == (250, 350)


@pytest.mark.parametrize("label", ["", "7", ["x", "long enough"]])
def test_documents_with_one_character_labels_are_skipped(byte_tokenizer, label):
    result = cut({"context": "c" * 300, "answers": label}, byte_tokenizer)
    assert result.doc is None and "at most one character" in result.skip_reason


def test_no_answer_keys_keeps_the_beginning(byte_tokenizer):
    context = "p" * 1000
    result = cut({"context": context}, byte_tokenizer, keys=())
    assert (result.start, result.end) == (0, 100)


def test_swde_centres_on_the_earliest_of_key_and_value(byte_tokenizer):
    text = "n" * 300 + "Director: " + "n" * 300 + "Mara Lindqvist" + "n" * 300
    doc = {"text": text, "key": "director", "value": "Mara Lindqvist"}
    spec = get_task("swde")
    result = truncate_context(
        doc, byte_tokenizer, context_key=spec.context_key, answer_keys=spec.answer_keys, context_length=150
    )
    assert (result.start, result.end) == (250, 350)


def test_truncation_keeps_the_question_and_identical_copies(byte_tokenizer):
    passage = " ".join(f"Fact {i}: the code of item {i} is C{i:04d}." for i in range(200))
    row = {
        "context": passage,
        "question": "What is the code of item 3?",
        "orig_question": "What is the code of item 3?",
        "answers": ["C0003"],
    }
    for task in ("drop", "triviaqa"):
        spec = get_task(task)
        (default,) = build_examples(spec, [row], 1, tokenizer=byte_tokenizer, context_length=300)
        (twice,) = build_examples(spec, [row], 2, tokenizer=byte_tokenizer, context_length=300)
        assert default.truncated and twice.truncated
        assert default.prompt.endswith(". What is the code of item 3?")
        assert twice.prompt.endswith(" What is the code of item 3?")
        body = twice.prompt[len("What is the code of item 3? ") : -len(" What is the code of item 3?")]
        first, second = body.split("\n")
        assert first == second
        assert len(first) <= 250 + 1  # the 250-token window plus the added "."
        assert default.prompt.startswith(first[:-1])

    nq = dict(row, context=passage)
    spec = get_task("nq512")
    (twice,) = build_examples(spec, [nq], 2, tokenizer=byte_tokenizer, context_length=300)
    body = twice.prompt[len("What is the code of item 3? ") : -len(" What is the code of item 3?")]
    first, second = body.split("\n")
    assert first == second and "C0003" in first


def test_build_examples_reports_skipped_rows(byte_tokenizer):
    spec = get_task("fda")
    rows = [
        {"text": "Product code: X. Rest of the report.", "key": "product code", "value": "X"},
        {"text": "Product code: DXN. Rest.", "key": "product code", "value": "DXN"},
    ]
    examples = build_examples(spec, rows, 1, tokenizer=byte_tokenizer, context_length=1000)
    assert examples[0].skip_reason and not examples[0].prompt
    assert examples[1].prompt == "Product code: DXN. Rest. Product code:"
    # truncation off: every row is kept
    kept = build_examples(spec, rows, 1, context_length=None)
    assert all(e.skip_reason is None for e in kept)


def test_contains_is_a_case_insensitive_substring():
    assert contains(" mara lindqvist, director", ["Mara Lindqvist"]) == 1.0
    assert contains("Mara", ["Mara Lindqvist"]) == 0.0
    assert contains("costs $5.00 (approx)", ["$5.00 (approx"]) == 1.0  # regex characters are literal
    assert contains("anything", [""]) == 1.0
    assert contains("x", []) == 0.0
    assert contains(" 3,500 people", ["3500", "3,500"]) == 1.0


def test_exact_match_and_f1():
    assert exact_match(" The North Sea.", ["North Sea"]) == 1.0
    assert exact_match("North Sea and more", ["North Sea"]) == 0.0
    assert token_f1("the north sea coast", ["North Sea"]) == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert token_f1("", [""]) == 1.0
    assert token_f1("paris", ["london"]) == 0.0
    assert score(" Paris", ["paris", "Lyon"]) == {"contains": 1.0, "exact_match": 1.0, "f1": 1.0}
