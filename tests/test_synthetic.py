"""Synthetic recall tasks: determinism, the three forms hold the same facts, answers by construction,
and a tiny model that learns MQAR on CPU."""

from __future__ import annotations

import pytest
import torch

from jrt_prompt.errors import JRTError
from jrt_prompt.prompts import JRTPrompt
from jrt_prompt.synthetic import (
    ALL_FORMS,
    KVDocsTask,
    ModelSpec,
    MQARTask,
    PromptForm,
    SetDisjointnessTask,
    TrainConfig,
    build_model,
    evaluate,
    kv_docs_examples,
    state_floats,
    train,
)
from jrt_prompt.synthetic.batch import IGNORE
from jrt_prompt.synthetic.kv_docs import question_for
from jrt_prompt.synthetic.mqar import SEP


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------- MQAR


def test_mqar_is_deterministic_by_seed():
    task = MQARTask(num_pairs=8, num_queries=3, num_keys=20, num_values=20)
    a = task.sample_mixture(12, _gen(7), ALL_FORMS)
    b = task.sample_mixture(12, _gen(7), ALL_FORMS)
    c = task.sample_mixture(12, _gen(8), ALL_FORMS)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.input_ids, c.input_ids)


def _segments(row: torch.Tensor) -> list[list[int]]:
    out, cur = [], []
    for t in row.tolist():
        if t == SEP:
            out.append(cur)
            cur = []
        else:
            cur.append(t)
    out.append(cur)
    return out


def test_mqar_forms_hold_the_same_facts_and_answers_are_right():
    task = MQARTask(num_pairs=6, num_queries=3, num_keys=10, num_values=12)
    batches = {f: task.sample(5, _gen(3), f) for f in ALL_FORMS}
    for i in range(5):
        segs = {f: _segments(b.input_ids[i]) for f, b in batches.items()}
        context = segs[PromptForm.default][0]
        answers_part = segs[PromptForm.default][1]
        assert len(segs[PromptForm.default]) == 2
        assert (
            segs[PromptForm.question_first][1] == context
            and segs[PromptForm.question_first][2] == answers_part
        )
        assert segs[PromptForm.jrt][1] == context == segs[PromptForm.jrt][2]
        assert segs[PromptForm.jrt][3] == answers_part
        queried = answers_part[0::2]
        assert segs[PromptForm.question_first][0] == queried == segs[PromptForm.jrt][0]
        pairs = dict(zip(context[0::2], context[1::2], strict=True))
        assert len(pairs) == task.num_pairs  # keys are distinct
        for f, batch in batches.items():
            row_t = batch.targets[i]
            pos = (row_t != IGNORE).nonzero().flatten().tolist()
            assert len(pos) == task.num_queries
            for p in pos:
                key = int(batch.input_ids[i, p])
                assert int(row_t[p]) == pairs[key] == int(batch.input_ids[i, p + 1]), f


def test_mqar_rejects_impossible_sizes():
    with pytest.raises(JRTError, match="num_queries"):
        MQARTask(num_pairs=4, num_queries=5)
    with pytest.raises(JRTError, match="num_keys"):
        MQARTask(num_pairs=40, num_queries=2, num_keys=30)


# ------------------------------------------------------------------------- set disjointness


def test_set_disjointness_shares_exactly_one_element_in_both_orders():
    task = SetDisjointnessTask(short_size=3, long_size=9, num_elements=40)
    for order in ("short_first", "long_first"):
        batches = {f: task.sample(6, _gen(11), f, order) for f in ALL_FORMS}
        for i in range(6):
            segs = {f: _segments(b.input_ids[i]) for f, b in batches.items()}
            first = segs[PromptForm.default][0]
            marked = segs[PromptForm.default][1]
            second, marks = marked[0::2], marked[1::2]
            assert len(first) == (3 if order == "short_first" else 9)
            assert len(second) == (9 if order == "short_first" else 3)
            shared = set(first) & set(second)
            assert len(shared) == 1
            assert [m == 2 for m in marks] == [
                s in shared for s in second
            ]  # YES = 2 exactly at the shared one
            assert (
                segs[PromptForm.jrt][0] == second
                and segs[PromptForm.jrt][1] == first == segs[PromptForm.jrt][2]
            )
            assert segs[PromptForm.question_first][:2] == [second, first]
            for b in batches.values():
                assert int((b.groups[i] >= 0).sum()) == len(second)


# --------------------------------------------------------------------------------- kv-docs


def test_kv_docs_examples_are_deterministic_and_answer_from_the_document():
    a = kv_docs_examples(20, seed=5)
    assert a == kv_docs_examples(20, seed=5)
    assert a != kv_docs_examples(20, seed=6)
    for ex in a:
        field = ex["question"].removeprefix("What is the ").removesuffix("?")
        (value,) = ex["answers"]
        lines = [
            ln
            for ln in ex["context"].splitlines()[1:]
            if ln.lower().startswith((field + " ", field + ":", "the " + field + " "))
        ]
        assert len(lines) == 1 and value in lines[0]


def test_kv_docs_rows_render_with_jrt_prompt_and_score_the_answer_bytes(byte_tokenizer):
    task = KVDocsTask(num_queries=1)
    for form in ALL_FORMS:
        batch = task.sample(4, _gen(2), form)
        for i in range(4):
            ids = batch.input_ids[i][batch.input_ids[i] != task.pad_id].tolist()
            text = bytes(ids).decode()
            scored = batch.targets[i][batch.targets[i] != IGNORE].tolist()
            answer = bytes(scored).decode()
            assert answer.startswith(" ") and answer.endswith("\n")
            prompt = text[: len(text) - len(answer)]
            question = prompt.splitlines()[-1]
            context = "\n".join(prompt.split("\n")[1 if form is not PromptForm.default else 0 :][:-1])
            doc = context if form is not PromptForm.jrt else context[: len(context) // 2]
            template = JRTPrompt(repeat=form.repeat, question_first=form is not PromptForm.default)
            assert template.render(doc, question) == prompt
            # ids are the byte-level tokenizer's ids
            assert byte_tokenizer(text, add_special_tokens=False)["input_ids"] == ids
            field = question.removeprefix("What is the ").removesuffix("?")
            assert question == question_for(field)


def test_kv_docs_open_field_names_come_from_the_open_vocabulary_and_answer_from_the_record():
    from jrt_prompt.synthetic.kv_docs import ALL_FIELDS, FIELD_FAMILIES, FIELD_TO_FAMILY, OPEN_FIELDS

    rows = kv_docs_examples(200, seed=3, min_fields=8, max_fields=14, field_names="open")
    assert rows == kv_docs_examples(200, seed=3, min_fields=8, max_fields=14, field_names="open")
    asked = set()
    for ex in rows:
        field = ex["question"].removeprefix("What is the ").removesuffix("?")
        asked.add(field)
        assert field in OPEN_FIELDS
        (value,) = ex["answers"]
        facts = ex["context"].splitlines()[1:]
        assert 8 <= len(facts) <= 14
        lines = [
            ln for ln in facts if ln.lower().startswith((field + " ", field + ":", "the " + field + " "))
        ]
        assert len(lines) == 1 and value in lines[0]
        if field in FIELD_TO_FAMILY and FIELD_FAMILIES[FIELD_TO_FAMILY[field]][1]:
            assert value in FIELD_FAMILIES[FIELD_TO_FAMILY[field]][1]  # family fields keep their values
    assert len(asked - set(ALL_FIELDS)) > 50  # most questions ask for names outside the 25 fixed ones


def test_kv_docs_rows_can_list_every_question_up_front():
    task = KVDocsTask(num_queries=3, field_names="open", questions_up_front="all")
    batch = task.sample_mixture(6, _gen(4), ALL_FORMS)
    for i in range(6):
        ids = batch.input_ids[i][batch.input_ids[i] != task.pad_id].tolist()
        lines = bytes(ids).decode().splitlines()
        asked = [
            ln.split("?")[0] + "?" for ln in lines if ln.startswith("What is the ") and not ln.endswith("?")
        ]
        assert len(asked) == 3  # the three answered questions
        if lines[0].startswith("What is the "):  # question-first and JRT rows
            assert lines[0] == " ".join(asked)
        else:
            assert lines[0].startswith("Record ")
    # evaluation rows (one question) are the layout jrt run shows a model, whatever the option
    one = KVDocsTask(num_queries=3, questions_up_front="all").sample(2, _gen(5), PromptForm.jrt)
    assert one.input_ids.equal(KVDocsTask(num_queries=3).sample(2, _gen(5), PromptForm.jrt).input_ids)


def test_kv_docs_options_are_validated():
    with pytest.raises(JRTError, match="field_names"):
        KVDocsTask(field_names="closed")
    with pytest.raises(JRTError, match="questions_up_front"):
        KVDocsTask(questions_up_front="some")
    from jrt_prompt.synthetic.training import make_task

    with pytest.raises(JRTError, match="no option bogus"):
        make_task("kv-docs", bogus=1)


# ------------------------------------------------------------------------- models and training


def test_state_floats_counts_linear_attention_state():
    model = build_model(ModelSpec("based", 32, 1, {"feature_dim": 2, "num_heads": 2}), 40, 0)
    # one BaseConv (conv_expand*d/2 channels, kernel-1 taps) + one Based layer (h * F * (dv + 1))
    assert state_floats(model, 100) == 32 * 2 + 2 * 7 * (16 + 1)
    attention = build_model(ModelSpec("attention", 32, 2), 40, 0)
    assert state_floats(attention, 100) == 2 * 2 * 100 * 32
    with pytest.raises(JRTError, match="unknown"):
        build_model(ModelSpec("lstm"), 40, 0)


def test_tiny_attention_model_learns_mqar_on_cpu():
    config = TrainConfig(
        task="mqar",
        task_options=dict(num_pairs=4, num_queries=2, num_keys=8, num_values=8),
        model=ModelSpec("attention", 32, 2),
        forms=("default",),
        batch_size=64,
        max_steps=300,
        lr=3e-3,
        bf16=False,
        log_every=1000,
    )
    torch.manual_seed(0)
    model, history = train(config, log=lambda _: None)
    assert history["steps"] == 300
    task = MQARTask(**config.task_options)
    accuracy = evaluate(model, task, [PromptForm.default], num_examples=256, bf16=False)
    chance = 1 / task.num_values
    assert accuracy["default"]["all"] > 2 * chance, accuracy


class _SetOracle(torch.nn.Module):
    """Says YES at the shared element (or, with ``wrong``, at the first element of the second set)."""

    def __init__(self, task, wrong: bool = False):
        super().__init__()
        self.task, self.wrong = task, wrong
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids):
        from types import SimpleNamespace

        from jrt_prompt.synthetic.set_disjointness import NO, SEP, YES

        b, n = input_ids.shape
        logits = torch.zeros(b, n, self.task.vocab_size)
        logits[..., NO] = 1.0
        for r in range(b):
            row = input_ids[r].tolist()
            last_sep = max(i for i, t in enumerate(row) if t == SEP)
            second = row[last_sep + 1 :: 2]  # the marked set: element, mark, element, mark, ...
            seps = [i for i, t in enumerate(row[:last_sep]) if t == SEP]
            others = row[(seps[-1] + 1 if seps else 0) : last_sep]  # the set read just before the marks
            for j, element in enumerate(second):
                pos = last_sep + 1 + 2 * j
                hit = (j == 0) if self.wrong else (element in others)
                if hit:
                    logits[r, pos, YES] = 2.0
        return SimpleNamespace(logits=logits)


def test_set_disjointness_found_score_is_right_for_an_oracle_and_chance_for_a_guess():
    from jrt_prompt.synthetic.training import evaluate_sd_found

    task = SetDisjointnessTask(short_size=3, long_size=9, num_elements=30)
    exact = evaluate_sd_found(_SetOracle(task), task, num_examples=40, batch_size=20, bf16=False)
    assert all(v == 1.0 for form in exact.values() for v in form.values())
    guess = evaluate_sd_found(
        _SetOracle(task, wrong=True), task, num_examples=400, batch_size=100, bf16=False
    )
    # the first element of the second set is the shared one with probability 1/|second set|
    assert abs(guess["default"]["short_first"] - 1 / 9) < 0.06
    assert abs(guess["default"]["long_first"] - 1 / 3) < 0.08


def test_set_disjointness_found_score_reads_only_the_prompt_non_causally():
    """JRT-RNN's encoder must stop before the marks, or its non-causal read would see the answers."""
    from jrt_prompt.synthetic.models import ModelSpec, build_model
    from jrt_prompt.synthetic.training import evaluate_sd_found, prompt_length

    task = SetDisjointnessTask(short_size=2, long_size=4, num_elements=12)
    model = build_model(ModelSpec("jrt_rnn", 16, 1, {"feature_dim": 2}), task.vocab_size, task.pad_id)
    evaluate_sd_found(model, task, ["default"], num_examples=4, batch_size=4, bf16=False)
    last = task.sample(4, torch.Generator().manual_seed(0), PromptForm.default, "long_first")
    assert model.config.enc_length == prompt_length(last)


def test_context_first_form_repeats_the_context_before_the_queries(byte_tokenizer):
    from jrt_prompt.synthetic.kv_docs import kv_docs_shared_examples

    task = MQARTask(num_pairs=6, num_queries=3, num_keys=10, num_values=12)
    default = task.sample(4, _gen(3), PromptForm.default)
    twice = task.sample(4, _gen(3), PromptForm.context_first)
    assert twice.input_ids.shape[1] == task.length(PromptForm.context_first)
    for i in range(4):
        context, answers = _segments(default.input_ids[i])
        assert _segments(twice.input_ids[i]) == [context, context, answers]
    assert (twice.targets != IGNORE).sum() == (default.targets != IGNORE).sum()
    assert PromptForm.context_first.repeat == 2 and not PromptForm.context_first.question_first_flag
    kv = KVDocsTask(num_queries=1).sample(2, _gen(2), PromptForm.context_first)
    text = bytes(kv.input_ids[0][kv.input_ids[0] != 257].tolist()).decode()
    assert not text.startswith("What is")  # the question comes after both copies
    rows = kv_docs_shared_examples(3, 4, seed=1)
    assert len(rows) == 12 and len({r["context"] for r in rows}) == 3
    assert all(r["answers"][0] in r["context"] for r in rows)
    assert len({(r["context"], r["question"]) for r in rows}) == 12  # distinct fields per document
