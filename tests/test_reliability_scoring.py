"""`jrt score` against hostile input lines: each becomes one error row, the rows around it are scored."""

import json
import time
from pathlib import Path

import pytest
from tiny_models import write_tiny_mamba

from jrt_prompt import load_model
from jrt_prompt.errors import JRTError
from jrt_prompt.prompts import DEFAULT_MAX_PROMPT_TOKENS, JRTPrompt
from jrt_prompt.scoring import ParsedRow, _batches, score_file


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(write_tiny_mamba(tmp_path_factory.mktemp("models") / "tiny-mamba"), device="cpu")


def ok_line(i, **extra):
    row = {"id": f"r{i}", "context": f"Item {i} has code {i * 7}.", "question": f"Code of item {i}?"}
    row.update(extra)
    return json.dumps(row).encode()


def rows_of(path):
    data = Path(path).read_bytes()
    assert data.endswith(b"\n")
    return [json.loads(line.decode("utf-8")) for line in data.split(b"\n")[:-1]]


HOSTILE = {
    # name: (raw line, expected kind, text the error must contain)
    "surrogate_context": (
        b'{"context": "abc \\ud800 def", "question": "q?"}',
        "invalid_unicode",
        "'context'",
    ),
    "surrogate_question": (b'{"context": "abc", "question": "\\udfff?"}', "invalid_unicode", "'question'"),
    "surrogate_id": (b'{"id": "x\\ud800", "context": "abc", "question": "q?"}', "invalid_unicode", "'id'"),
    "surrogate_answers": (
        b'{"context": "abc", "question": "q?", "answers": ["ok", "\\ud83d"]}',
        "invalid_unicode",
        "'answers'",
    ),
    "huge_integer": (
        b'{"context": "abc", "question": "q?", "x": ' + b"7" * 5000 + b"}",
        "invalid_json",
        "digits",
    ),
    "huge_integer_id": (
        b'{"id": ' + b"9" * 4400 + b', "context": "abc", "question": "q?"}',
        "invalid_json",
        "",
    ),
    "deep_nesting": (
        b'{"context": "abc", "question": "q?", "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
        "invalid_json",
        "nested",
    ),
    "deep_top_level": (b"[" * 100_000 + b"]" * 100_000, "invalid_json", "nested"),
    "giant_repeat": (
        b'{"context": "abc", "question": "q?", "repeat": 1000000000}',
        "too_long",
        "repeat 1000000000",
    ),
    "float_repeat": (b'{"context": "abc", "question": "q?", "repeat": 1e400}', "wrong_type", "Infinity"),
    "id_out_of_range": (
        b'{"id": ' + b"9" * 30 + b', "context": "abc", "question": "q?"}',
        "wrong_type",
        "64-bit",
    ),
}


def test_hostile_lines_become_one_error_row_each_and_neighbours_are_scored(tmp_path, tiny):
    names = sorted(HOSTILE)
    lines = []
    for i, name in enumerate(names):
        lines += [ok_line(i), HOSTILE[name][0]]
    lines.append(ok_line(len(names)))
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.jsonl"
    started = time.perf_counter()
    summary = score_file(src, out, model=tiny, max_new_tokens=2)
    assert time.perf_counter() - started < 120
    rows = rows_of(out)
    assert [r["line"] for r in rows] == list(range(1, len(lines) + 1))
    for i, name in enumerate(names):
        ok, bad = rows[2 * i], rows[2 * i + 1]
        assert ok["status"] == "ok" and ok["id"] == f"r{i}", name
        _, kind, needle = HOSTILE[name]
        assert bad["status"] == "error" and bad["kind"] == kind, (name, bad)
        assert needle in bad["error"] and "\n" not in bad["error"], (name, bad["error"])
        assert len(bad["error"]) < 400, name
    assert rows[-1]["status"] == "ok"
    assert summary.errors == len(names) and summary.ok == len(names) + 1
    again = score_file(src, out, model=tiny, max_new_tokens=2)  # every rerun finishes too
    assert (again.scored_now, again.done_before) == (0, len(lines))


def test_a_huge_context_is_an_error_row_without_building_the_prompt(tmp_path, tiny):
    # no position limit in the tiny Mamba's config: the default cap applies
    src = tmp_path / "in.jsonl"
    src.write_bytes(
        json.dumps({"context": "lorem ipsum " * 900_000, "question": "q?"}).encode()  # ~10.8 MB
        + b"\n"
        + ok_line(1)
        + b"\n"
    )
    out = tmp_path / "out.jsonl"
    summary = score_file(src, out, model=tiny, max_new_tokens=2)
    big, small = rows_of(out)
    assert big["kind"] == "too_long" and f"limit of {DEFAULT_MAX_PROMPT_TOKENS} prompt tokens" in big["error"]
    assert "--max-prompt-tokens" in big["error"] and "--fit-context" in big["error"]
    assert small["status"] == "ok"
    assert summary.settings["max_prompt_tokens"] == DEFAULT_MAX_PROMPT_TOKENS


def test_max_prompt_tokens_overrides_the_default_cap_and_repeat_is_checked_first(tmp_path, tiny):
    src = tmp_path / "in.jsonl"
    src.write_bytes(
        json.dumps({"context": "x" * 300, "question": "q?"}).encode()
        + b"\n"
        + json.dumps({"context": "x" * 30, "question": "q?", "repeat": 10**12}).encode()
        + b"\n"
    )
    out = tmp_path / "out.jsonl"
    score_file(src, out, model=tiny, max_new_tokens=2, max_prompt_tokens=100, repeat=1)
    first, second = rows_of(out)
    assert first["kind"] == "too_long" and "limit of 100" in first["error"]
    assert second["kind"] == "too_long" and "repeat 1000000000000" in second["error"]
    with pytest.raises(JRTError, match="max_prompt_tokens=0 is invalid"):
        score_file(src, tmp_path / "o2.jsonl", model=tiny, max_prompt_tokens=0)


def test_fit_context_cuts_a_huge_context_in_bounded_time(tmp_path, tiny):
    context = "".join(f"fact {i} is {i % 97}. " for i in range(150_000))  # ~2.6 MB
    src = tmp_path / "in.jsonl"
    src.write_bytes(json.dumps({"context": context, "question": "What is fact 3?"}).encode() + b"\n")
    out = tmp_path / "out.jsonl"
    started = time.perf_counter()
    score_file(src, out, model=tiny, max_new_tokens=2, max_prompt_tokens=400, fit_context=True)
    assert time.perf_counter() - started < 60
    (row,) = rows_of(out)
    assert row["status"] == "ok" and row["prompt_tokens"] <= 400
    # the byte tokenizer counts bytes: everything past one copy's share was cut
    assert row["context_cut_tokens"] >= len(context) - 200


def test_fit_refuses_a_repeat_larger_than_the_budget_without_rendering(tiny):
    with pytest.raises(JRTError, match="lower the repeat"):
        JRTPrompt(repeat=10**12).fit("abc", "q?", tiny.tokenizer, 100)


def test_implicit_ids_never_collide_with_explicit_ones(tmp_path, tiny):
    src = tmp_path / "in.jsonl"
    src.write_bytes(
        json.dumps({"context": "abc", "question": "q?"}).encode()
        + b"\n"
        + json.dumps({"id": 1, "context": "abd", "question": "q?"}).encode()
        + b"\n"
        + json.dumps({"id": "2", "context": "abe", "question": "q?"}).encode()
        + b"\n"
        + json.dumps({"context": "abf", "question": "q?"}).encode()
        + b"\n"
        + json.dumps({"id": 1, "context": "abg", "question": "q?"}).encode()
        + b"\n"
    )
    out = tmp_path / "out.jsonl"
    score_file(src, out, model=tiny, max_new_tokens=1)
    rows = rows_of(out)
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "ok", "error"]
    assert rows[0]["id"] is None and rows[1]["id"] == 1 and rows[3]["id"] is None
    assert rows[4]["kind"] == "duplicate_id" and "first on line 2" in rows[4]["error"]


def test_resume_against_another_input_without_ids_is_refused(tmp_path, tiny):
    first = tmp_path / "a.jsonl"
    first.write_bytes(b'{"context": "alpha", "question": "q?"}\n{"context": "beta", "question": "q?"}\n')
    other = tmp_path / "b.jsonl"
    other.write_bytes(b'{"context": "gamma", "question": "q?"}\n{"context": "delta", "question": "q?"}\n')
    out = tmp_path / "out.jsonl"
    score_file(first, out, model=tiny, max_new_tokens=1, limit=1)
    kept = out.read_bytes()
    with pytest.raises(JRTError, match="another input"):
        score_file(other, out, model=tiny, max_new_tokens=1)
    assert out.read_bytes() == kept
    done = score_file(first, out, model=tiny, max_new_tokens=1)  # the right input resumes
    assert (done.done_before, done.scored_now) == (1, 1)
    assert all(len(r["input_hash"]) == 16 for r in rows_of(out))


def test_an_edited_error_row_is_rescored_with_retry_errors(tmp_path, tiny):
    src = tmp_path / "in.jsonl"
    src.write_bytes(ok_line(0) + b"\n" + b"{broken\n")
    out = tmp_path / "out.jsonl"
    score_file(src, out, model=tiny, max_new_tokens=1)
    src.write_bytes(ok_line(0) + b"\n" + ok_line(1) + b"\n")
    with pytest.raises(JRTError, match="--retry-errors"):
        score_file(src, out, model=tiny, max_new_tokens=1)
    fixed = score_file(src, out, model=tiny, max_new_tokens=1, retry_errors=True)
    assert fixed.ok == 2 and fixed.scored_now == 1


def _row(line, tokens):
    row = ParsedRow(line, None)
    row.prompt_tokens = tokens
    return row


def test_batches_never_pad_short_rows_up_to_a_huge_one():
    rows = [_row(1, 30_000)] + [_row(i, 100) for i in range(2, 9)]
    batches = [[r.line for r in b] for b in _batches(rows, 8, 32_768)]
    assert batches == [[1], list(range(2, 9))]
    # rows of similar length fill whole batches; the padded tokens of a batch stay under the budget
    rows = [_row(i, 3000 - i) for i in range(1, 21)]
    batches = list(_batches(rows, 8, 32_768))
    assert [len(b) for b in batches] == [8, 8, 4]
    rows = [_row(i, 9000) for i in range(1, 6)]
    assert [len(b) for b in _batches(rows, 8, 32_768)] == [3, 2]
