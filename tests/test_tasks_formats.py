"""Exact prompt strings of every task on hand-written fixture rows (expected strings written by hand)."""

import json
from pathlib import Path

import pytest

from jrt_prompt.errors import JRTError
from jrt_prompt.tasks import get_task

FIXTURES = Path(__file__).parent / "fixtures" / "tasks"


def rows(name):
    return [json.loads(line) for line in (FIXTURES / f"{name}.jsonl").read_text().splitlines()]


EXPECTED = {
    # task: [(default, twice) per fixture row]
    "swde": [
        (
            "Title: The Silent Harbor\nDirector: Mara Lindqvist\nYear: 1998\nGenre: drama. Director:",
            "Information about Director. Title: The Silent Harbor\nDirector: Mara Lindqvist\nYear: 1998\n"
            "Genre: drama.\nTitle: The Silent Harbor\nDirector: Mara Lindqvist\nYear: 1998\nGenre: drama. Director:",
        ),
        (
            "Home | Books | Contact\nAuthor: Peter Okafor. Publisher: Bluefield Press. Pages: 320. Publisher:",
            "Information about Publisher. Home | Books | Contact\nAuthor: Peter Okafor. Publisher: Bluefield Press. "
            "Pages: 320.\nHome | Books | Contact\nAuthor: Peter Okafor. Publisher: Bluefield Press. Pages: 320. Publisher:",
        ),
        (
            "University of Eastmoor\nLocation: Harlow, Vermont\nPhone: 555-0199. Location:",
            "Information about Location. University of Eastmoor\nLocation: Harlow, Vermont\nPhone: 555-0199.\n"
            "University of Eastmoor\nLocation: Harlow, Vermont\nPhone: 555-0199. Location:",
        ),
    ],
    "fda": [
        (
            "510(k) SUMMARY\nDevice trade name: CardioTrack 3\nApplicant: Norwell Medical Inc.\nClassification: Class II. Applicant:",
            "Information about Applicant. 510(k) SUMMARY\nDevice trade name: CardioTrack 3\nApplicant: Norwell Medical Inc.\n"
            "Classification: Class II.\n510(k) SUMMARY\nDevice trade name: CardioTrack 3\nApplicant: Norwell Medical Inc.\n"
            "Classification: Class II. Applicant:",
        ),
        (
            "Premarket notification. Product code: DXN. Common name: blood pressure cuff. . Product code:",
            "Information about Product code. Premarket notification. Product code: DXN. Common name: blood pressure cuff. .\n"
            "Premarket notification. Product code: DXN. Common name: blood pressure cuff. . Product code:",
        ),
        (
            "Indications for use: the OrthoFix plate is intended for fixation of fractures. Predicate device: K123456. Predicate device:",
            "Information about Predicate device. Indications for use: the OrthoFix plate is intended for fixation of fractures. "
            "Predicate device: K123456.\nIndications for use: the OrthoFix plate is intended for fixation of fractures. "
            "Predicate device: K123456. Predicate device:",
        ),
    ],
    "squad": [
        (
            "The Normans were descended from Norse raiders who settled in Normandy in the 10th century. The Normans were descended from",
            "Who were the Normans descended from? The Normans were descended from Norse raiders who settled in Normandy in the "
            "10th century. \nThe Normans were descended from Norse raiders who settled in Normandy in the 10th century. "
            "The Normans were descended from",
        ),
        (
            "The river Rhine flows through six countries and ends in the North Sea. The Rhine ends in the",
            "Where does the Rhine end? The river Rhine flows through six countries and ends in the North Sea.\n"
            "The river Rhine flows through six countries and ends in the North Sea. The Rhine ends in the",
        ),
    ],
    "triviaqa": [
        (
            "Mount Kilimanjaro  Kilimanjaro is the highest mountain in Africa, located in Tanzania. Which country is Kilimanjaro in?",
            "Which country is Kilimanjaro in? Mount Kilimanjaro  Kilimanjaro is the highest mountain in Africa, located in "
            "Tanzania.\nMount Kilimanjaro  Kilimanjaro is the highest mountain in Africa, located in Tanzania. "
            "Which country is Kilimanjaro in?",
        ),
        (
            "Penicillin  Penicillin was discovered by Alexander Fleming in 1928. Who discovered penicillin?",
            "Who discovered penicillin: Penicillin  Penicillin was discovered by Alexander Fleming in 1928.\n"
            "Penicillin  Penicillin was discovered by Alexander Fleming in 1928. Who discovered penicillin?",
        ),
    ],
    "drop": [
        (
            # the trailing question is removed once; the space before the second copy stops the loop
            "The Bears scored 14 points in the first quarter and 7 in the second. How many points did the Bears score "
            "in the first half?. How many points did the Bears score in the first half?",
            "How many points did the Bears score in the first half? The Bears scored 14 points in the first quarter and 7 in "
            "the second. How many points did the Bears score in the first half?.\nThe Bears scored 14 points in the first "
            "quarter and 7 in the second. How many points did the Bears score in the first half?. How many points did the "
            "Bears score in the first half?",
        ),
        (
            "In 1850 the town had 2,000 people; by 1900 it had 5,500. How many more people lived in the town in 1900 than in 1850?",
            "How many more people lived in the town in 1900 than in 1850? In 1850 the town had 2,000 people; by 1900 it had "
            "5,500.\nIn 1850 the town had 2,000 people; by 1900 it had 5,500. How many more people lived in the town in 1900 "
            "than in 1850?",
        ),
    ],
    "nq1024": [
        (
            "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was designed by the company of Gustave Eiffel. "
            "who designed the eiffel tower",
            "who designed the eiffel tower The Eiffel Tower is a wrought-iron lattice tower in Paris. It was designed by the "
            "company of Gustave Eiffel.\nThe Eiffel Tower is a wrought-iron lattice tower in Paris. It was designed by the "
            "company of Gustave Eiffel. who designed the eiffel tower",
        ),
        (
            # the default form removes a trailing question only once (the harness's NQ quirk)
            "Water boils at 100 degrees Celsius at sea level.. what temperature does water boil at sea level. "
            "what temperature does water boil at sea level",
            "what temperature does water boil at sea level Water boils at 100 degrees Celsius at sea level.\n"
            "Water boils at 100 degrees Celsius at sea level. what temperature does water boil at sea level",
        ),
    ],
}


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_default_and_twice_strings(task):
    spec = get_task(task)
    for row, (default, twice) in zip(rows(task), EXPECTED[task], strict=True):
        assert spec.prompt(dict(row), 1) == default
        assert spec.prompt(dict(row), 2) == twice


def test_repeat_three_adds_one_more_identical_copy():
    # k > 2 extends the paper's twice layout with one more copy of the context
    assert get_task("drop").prompt(rows("drop")[1], 3) == (
        "How many more people lived in the town in 1900 than in 1850? In 1850 the town had 2,000 people; by 1900 it had "
        "5,500.\nIn 1850 the town had 2,000 people; by 1900 it had 5,500.\nIn 1850 the town had 2,000 people; by 1900 "
        "it had 5,500. How many more people lived in the town in 1900 than in 1850?"
    )
    assert get_task("squad").prompt(rows("squad")[1], 3) == (
        "Where does the Rhine end? The river Rhine flows through six countries and ends in the North Sea.\n"
        "The river Rhine flows through six countries and ends in the North Sea.\n"
        "The river Rhine flows through six countries and ends in the North Sea. The Rhine ends in the"
    )


def test_prompt_does_not_mutate_row():
    row = rows("swde")[0]
    before = dict(row)
    get_task("swde").prompt(row, 1)
    assert row == before


def test_gold_labels():
    assert get_task("swde").gold(rows("swde")[0]) == ["Mara Lindqvist"]
    assert get_task("triviaqa").gold(rows("triviaqa")[0]) == ["Tanzania", "United Republic of Tanzania"]


def test_task_names_and_aliases():
    assert get_task("based_nq_512").name == "nq512"
    assert get_task("NQ").name == "nq1024"
    assert get_task("based_squad").name == "squad"
    with pytest.raises(JRTError, match="unknown task"):
        get_task("hellaswag")
    with pytest.raises(JRTError, match="--repeat 2"):
        get_task("based_swde_twice")


def test_empty_question_does_not_loop_forever():
    doc = {"context": "Some passage.", "question": "   ", "orig_question": "", "answers": ["x"]}
    assert get_task("drop").prompt(doc, 1) == "Some passage. "


def test_repeat_zero_is_an_error():
    with pytest.raises(JRTError, match="repeat=0"):
        get_task("drop").prompt(rows("drop")[0], 0)


def test_paper_expands_to_the_six_table_1_tasks():
    from jrt_prompt.tasks import expand_tasks

    assert expand_tasks(["paper", "swde", "kv-docs"]) == [
        "swde",
        "fda",
        "squad",
        "triviaqa",
        "drop",
        "nq1024",
        "kv-docs",
    ]


def test_kv_docs_task_uses_the_layout_the_demo_model_was_trained_on():
    from jrt_prompt.synthetic.forms import PromptForm
    from jrt_prompt.synthetic.kv_docs import template_for
    from jrt_prompt.tasks.data import load_task_rows

    spec = get_task("kv_docs")
    rows, source = load_task_rows(spec, None, 3)
    assert len(rows) == 3 and source
    for row in rows:
        assert spec.prompt(row, 1) == template_for(PromptForm.default).render(row["context"], row["question"])
        assert spec.prompt(row, 2) == template_for(PromptForm.jrt).render(row["context"], row["question"])
        assert spec.prompt(row, 1) == f"{row['context']}\n{row['question']}"
        assert spec.gold(row) == row["answers"] and row["answers"][0] in row["context"]
