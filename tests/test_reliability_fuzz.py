"""Fuzzing the JSONL reader and `score_jsonl` (hypothesis) with a real tiny model and tokenizer.

Every generated input line must give exactly one output row (a result or an error row), every
output line must be UTF-8 JSON, nothing may escape, and a rerun must find everything done.
"""

import codecs
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import write_tiny_mamba

from jrt_prompt import load_model
from jrt_prompt.scoring import ScoreConfig, _error_row, _jsonl_bytes, engine_for, parse_row, score_jsonl

ESCAPES = ["\\ud800", "\\udfff", "\\ud83d\\ude00", "\\ud83d", "\\u0000", "\\n", '\\"', "\\\\", "\\u00e9"]


def _json_string(pieces: list) -> str:
    """A JSON string literal built from text pieces (escaped) and raw escape sequences."""
    return '"' + "".join(p if p in ESCAPES else json.dumps(p)[1:-1] for p in pieces) + '"'


text_pieces = st.lists(st.one_of(st.text(max_size=12), st.sampled_from(ESCAPES)), max_size=6)
json_text = text_pieces.map(_json_string)
plain_scalar = st.one_of(
    st.none().map(json.dumps),
    st.booleans().map(json.dumps),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=False).map(json.dumps),
    json_text,
)
# numbers Python's json cannot hold as int, nesting deeper than its recursion limit, ...
nasty = st.sampled_from(["1e400", "-1e400", "9" * 4301, "[" * 3000 + "]" * 3000, "{}", "[]"])
scalar = st.integers(0, 9).flatmap(lambda k: nasty if k == 9 else plain_scalar)
value = st.one_of(scalar, st.lists(scalar, max_size=3).map(lambda xs: "[" + ", ".join(map(str, xs)) + "]"))


def _field(name: str, strategy) -> st.SearchStrategy:
    return st.one_of(st.just(None), strategy.map(lambda v: f'"{name}": {v}'))


@st.composite
def object_line(draw) -> bytes:
    """A JSON object with the row's fields (or not), each of a good or a bad type."""
    fields = [
        draw(_field("context", st.one_of(json_text, json_text, value))),
        draw(_field("question", st.one_of(json_text, json_text, value))),
        draw(
            _field("id", st.one_of(st.integers(0, 4).map(str), st.sampled_from(['"a"', '"b"', "1"]), value))
        ),
        draw(_field("answers", st.one_of(json_text, value))),
        draw(_field("repeat", st.one_of(st.integers(-2, 4).map(str), st.just("1000000000"), value))),
        draw(_field("question_first", st.one_of(st.sampled_from(["true", "false"]), value))),
        draw(_field("extra", value)),
    ]
    if draw(st.integers(0, 2)) < 2:  # mostly rows with good text fields: most rows of real files are
        fields[0] = '"context": ' + json.dumps(draw(st.text(min_size=1, max_size=40)) + "x")
        if draw(st.integers(0, 9)) == 9:  # a context around or far over the prompt cap (600 tokens)
            fields[0] = '"context": ' + json.dumps("word " * draw(st.integers(50, 40_000)))
        fields[1] = '"question": ' + json.dumps(draw(st.text(max_size=15)) + "?")
        for k in range(2, 7):
            if draw(st.integers(0, 2)) < 2:
                fields[k] = None
    text = "{" + ", ".join(f for f in fields if f is not None) + "}"
    data = text.encode("utf-8", "surrogatepass")
    # (hypothesis starts from the smallest draws: 0 means the common, good case)
    if draw(st.integers(0, 9)) == 9:  # a torn line
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.integers(0, 14)) == 14:  # a stray byte that is not UTF-8
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xe9", b"\xed\xa0\x80"])) + data[at:]
    return data


raw_line = (
    st.integers(0, 9)
    .flatmap(lambda k: st.binary(max_size=60) if k == 9 else object_line())
    .map(lambda b: b.replace(b"\n", b" "))
)


def _expected_lines(lines: list[bytes]) -> list[int]:
    """1-based numbers of the lines that are rows (not blank; the first line's BOM ignored)."""
    out = []
    for number, raw in enumerate(lines, start=1):
        if number == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        if raw.strip():
            out.append(number)
    return out


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    loaded = load_model(write_tiny_mamba(tmp_path_factory.mktemp("models") / "tiny-mamba"), device="cpu")
    return engine_for(loaded, batch_size=16)


def test_parse_row_never_raises_and_error_rows_always_encode():
    seen = []
    config = ScoreConfig(input=Path("in.jsonl"), out=Path("out.jsonl"))

    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(raw_line, min_size=10, max_size=14))
    def check(lines):
        seen.extend(lines)
        for number, raw in enumerate(lines, start=1):
            row = parse_row(number, raw, config)
            assert (row.error is None) == (row.kind is None)
            if row.error is not None:
                encoded = _jsonl_bytes([_error_row(row)])
                assert json.loads(encoded.decode("utf-8"))["line"] == number
                assert "\n" not in row.error and len(row.error) < 400
            else:
                row.context.encode("utf-8"), row.question.encode("utf-8")  # valid Unicode only

    check()
    assert len(seen) >= 600


def test_score_jsonl_gives_one_row_per_line_and_nothing_escapes(tmp_path_factory, engine):
    seen = []

    @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(raw_line, min_size=50, max_size=56))
    def check(lines):
        folder = tmp_path_factory.mktemp("fuzz")
        src, out = folder / "in.jsonl", folder / "out.jsonl"
        src.write_bytes(b"\n".join(lines) + b"\n")
        config = ScoreConfig(input=src, out=out, max_new_tokens=1, batch_size=16, max_prompt_tokens=600)
        summary = score_jsonl(config, engine)
        expected = _expected_lines(lines)
        data = out.read_bytes()
        assert data.endswith(b"\n") or not expected
        rows = [json.loads(line.decode("utf-8")) for line in data.split(b"\n")[:-1]]
        assert [r["line"] for r in rows] == expected  # one row per line, in input order
        assert summary.rows == len(expected) and summary.ok + summary.errors == len(expected)
        for row in rows:
            assert row["status"] in ("ok", "error")
            if row["status"] == "error":
                assert row["kind"] and row["error"] and "\n" not in row["error"]
            if row.get("kind") == "duplicate_id":  # only explicit ids can collide
                assert "id" in json.loads(lines[row["line"] - 1].decode("utf-8"))
        again = score_jsonl(config, engine)
        assert (again.scored_now, again.done_before) == (0, len(expected))
        assert sorted(p.name for p in folder.iterdir()) == ["in.jsonl", "out.jsonl", "out.jsonl.summary.json"]
        seen.extend(lines)

    check()
    assert len(seen) >= 2000
