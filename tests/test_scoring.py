"""`jrt score` on a tiny random Mamba: bad rows, resume, torn-line repair, kill -9 mid-run."""

import dataclasses
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_models import write_tiny_llama, write_tiny_mamba
from typer.testing import CliRunner

from jrt_prompt import load_model
from jrt_prompt.errors import JRTError
from jrt_prompt.scoring import repair_output, score_file


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_mamba(tmp_path_factory.mktemp("models") / "tiny-mamba")


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_model(tiny_dir, device="cpu")


def good_row(i, **extra):
    row = {
        "id": f"r{i}",
        "context": f"Item {i} has code {i * 7}. " * (1 + i % 3),
        "question": f"What is the code of item {i}?",
        "answers": [str(i * 7)],
    }
    row.update(extra)
    return json.dumps(row).encode()


def write_input(path, n):
    path.write_bytes(b"\n".join(good_row(i) for i in range(n)) + b"\n")
    return path


def read_rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


BAD_LINES = {
    # line number in the file: (raw bytes, expected kind)
    2: (b'{"context": "abc", "question": ', "invalid_json"),
    3: (b'{"question": "Where?"}', "missing_field"),
    4: (b'{"context": 42, "question": "Where?"}', "wrong_type"),
    5: (b'{"context": "  \\n ", "question": "Where?"}', "empty_context"),
    6: (b'{"context": "caf\xe9 au lait", "question": "Where?"}', "not_utf8"),
    7: (json.dumps({"context": "long " * 300, "question": "Where?"}).encode(), "too_long"),
    8: (b'["context", "question"]', "not_an_object"),
    9: (b'{"context": "abc", "question": "q?", "answers": [1, 2]}', "wrong_type"),
    10: (b'{"context": "abc", "question": "q?", "repeat": 0}', "wrong_type"),
    11: (good_row(0), "duplicate_id"),
}


def test_bad_rows_become_error_rows_and_the_run_goes_on(tmp_path, tiny):
    lines = [good_row(0)] + [BAD_LINES[n][0] for n in sorted(BAD_LINES)] + [b"", good_row(1), good_row(2)]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.jsonl"
    summary = score_file(src, out, model=tiny, max_new_tokens=4, batch_size=2, max_prompt_tokens=1000)
    rows = read_rows(out)
    assert [r["line"] for r in rows] == [1, *sorted(BAD_LINES), 13, 14]  # blank line 12 is not a row
    by_line = {r["line"]: r for r in rows}
    for number, (_, kind) in BAD_LINES.items():
        assert by_line[number]["status"] == "error", number
        assert by_line[number]["kind"] == kind, (number, by_line[number])
        assert by_line[number]["error"]
    assert "0xe9" in by_line[6]["error"] and "prompt tokens" in by_line[7]["error"]
    assert "first on line 1" in by_line[11]["error"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert [r["id"] for r in ok] == ["r0", "r1", "r2"]
    for r in ok:
        assert r["prompt_tokens"] > 0 and 1 <= r["answer_tokens"] <= 4 and r["batch_seconds"] > 0
        assert set(r) >= {"prediction", "finish_reason", "contains", "exact_match", "f1"}
    assert (summary.rows, summary.ok, summary.errors) == (13, 3, 10)
    saved = json.loads(out.with_name("out.jsonl.summary.json").read_text())
    assert saved["errors"] == 10 and saved["error_kinds"]["wrong_type"] == 3


def test_prompt_layout_follows_repeat_and_row_overrides(tmp_path, tiny):
    src = tmp_path / "in.jsonl"
    src.write_bytes(
        good_row(3) + b"\n" + good_row(4, repeat=1) + b"\n" + good_row(5, question_first=False) + b"\n"
    )
    out = tmp_path / "out.jsonl"
    score_file(src, out, model=tiny, max_new_tokens=2)
    tok = tiny.tokenizer
    rows = {r["id"]: r for r in read_rows(out)}
    ctx3, q3 = json.loads(good_row(3))["context"], json.loads(good_row(3))["question"]
    assert rows["r3"]["prompt_tokens"] == len(tok(f"{q3}\n{ctx3}\n{ctx3}\n{q3}")["input_ids"])
    ctx4, q4 = json.loads(good_row(4))["context"], json.loads(good_row(4))["question"]
    assert rows["r4"]["repeat"] == 1 and not rows["r4"]["question_first"]
    assert rows["r4"]["prompt_tokens"] == len(tok(f"{ctx4}\n{q4}")["input_ids"])
    assert rows["r5"]["repeat"] == 2 and rows["r5"]["question_first"] is False


def test_retry_errors_rescores_error_rows_only(tmp_path, tiny):
    src = tmp_path / "in.jsonl"
    src.write_bytes(
        good_row(0) + b"\n" + json.dumps({"context": "long " * 60, "question": "q?"}).encode() + b"\n"
    )
    out = tmp_path / "out.jsonl"
    score_file(src, out, model=tiny, max_new_tokens=2, max_prompt_tokens=200)
    first = read_rows(out)
    assert [r["status"] for r in first] == ["ok", "error"]
    again = score_file(src, out, model=tiny, max_new_tokens=2, max_prompt_tokens=1000, retry_errors=True)
    rows = read_rows(out)
    assert (again.done_before, again.scored_now) == (1, 1)
    assert rows[0] == first[0] and rows[1]["status"] == "ok" and len(rows) == 2


def test_fit_context_cuts_instead_of_failing(tmp_path, tiny):
    src = tmp_path / "in.jsonl"
    long_context = " ".join(f"Fact {i}: code {i * 3}." for i in range(60))
    src.write_bytes(
        json.dumps({"context": long_context, "question": "What is the code of fact 2?"}).encode() + b"\n"
    )
    out = tmp_path / "out.jsonl"
    score_file(src, out, model=tiny, max_new_tokens=2, max_prompt_tokens=300, fit_context=True)
    (row,) = read_rows(out)
    assert row["status"] == "ok" and row["prompt_tokens"] <= 300 and row["context_cut_tokens"] > 0
    # both copies are cut alike: prompt = question + 2 copies + question + 3 separators
    kept = (300 - 2 * len("What is the code of fact 2?") - 3) // 2
    assert row["context_cut_tokens"] >= len(long_context) - kept


def test_the_model_limit_applies_without_a_flag(tmp_path):
    # tiny llama has 512 positions: 512 - 8 new tokens = 504 prompt tokens at most
    model = load_model(write_tiny_llama(tmp_path / "llama"), device="cpu")
    src = tmp_path / "in.jsonl"
    src.write_bytes(
        json.dumps({"context": "x" * 600, "question": "q?"}).encode()
        + b"\n"
        + json.dumps({"context": "short", "question": "q?"}).encode()
        + b"\n"
    )
    score_file(src, tmp_path / "out.jsonl", model=model, max_new_tokens=8, repeat=1)
    rows = read_rows(tmp_path / "out.jsonl")
    assert rows[0]["kind"] == "too_long" and "limit of 504" in rows[0]["error"]
    assert rows[1]["status"] == "ok"


def test_resume_skips_done_rows_and_repairs_a_torn_line(tmp_path, tiny):
    src = write_input(tmp_path / "in.jsonl", 9)
    out = tmp_path / "out.jsonl"
    first = score_file(src, out, model=tiny, max_new_tokens=3, batch_size=2, limit=4)
    assert (first.rows, first.scored_now) == (4, 4)
    before = {r["line"]: r for r in read_rows(out)}
    # simulate a kill in the middle of writing a row: half a JSON line, no newline
    with open(out, "ab") as f:
        f.write(json.dumps({"line": 5, "id": "r4", "status": "ok", "prediction": "abc"}).encode()[:25])
    second = score_file(src, out, model=tiny, max_new_tokens=3, batch_size=2)
    assert second.torn_lines_repaired == 1
    assert (second.done_before, second.scored_now, second.rows) == (4, 5, 9)
    rows = read_rows(out)
    assert [r["line"] for r in rows] == list(range(1, 10))
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(9)]
    for line, row in before.items():
        assert rows[line - 1] == row  # done rows are kept as they were
    third = score_file(src, out, model=tiny, max_new_tokens=3)
    assert (third.done_before, third.scored_now) == (9, 0)
    assert len(read_rows(out)) == 9


def test_repair_drops_unparsable_and_duplicate_lines(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(
        b'{"line": 1, "id": 1}\n{"line": 1, "id": 1}\nnot json\n{"line": 2, "id": 2}\n{"line": 3, "i'
    )
    rows, torn = repair_output(out)
    assert sorted(rows) == [1, 2] and torn == 2
    assert out.read_bytes() == b'{"line": 1, "id": 1}\n{"line": 2, "id": 2}\n'


def test_output_from_another_input_is_refused(tmp_path, tiny):
    src = write_input(tmp_path / "in.jsonl", 2)
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"line": 1, "id": "something-else", "status": "ok"}) + "\n")
    with pytest.raises(JRTError, match="another input"):
        score_file(src, out, model=tiny, max_new_tokens=2)


def test_a_second_writer_is_refused(tmp_path, tiny):
    src = write_input(tmp_path / "in.jsonl", 2)
    out = tmp_path / "out.jsonl"
    with open(tmp_path / "out.jsonl.lock", "ab") as holder:  # what a running `jrt score` holds
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        with pytest.raises(JRTError, match="another scoring run"):
            score_file(src, out, model=tiny, max_new_tokens=2)
    assert not out.exists()
    score_file(src, out, model=tiny, max_new_tokens=2)
    assert len(read_rows(out)) == 2 and not (tmp_path / "out.jsonl.lock").exists()


def test_cli_strict_exit_code_and_summary(tmp_path, tiny_dir):
    from jrt_cli.main import app

    src = tmp_path / "in.jsonl"
    src.write_bytes(good_row(0) + b"\n" + b"{broken\n")
    args = ["score", str(src), "--model", str(tiny_dir), "--max-new-tokens", "2", "--device", "cpu"]
    runner = CliRunner()
    relaxed = runner.invoke(app, [*args, "--out", str(tmp_path / "a.jsonl")])
    assert relaxed.exit_code == 0, relaxed.output
    strict = runner.invoke(app, [*args, "--out", str(tmp_path / "b.jsonl"), "--strict"])
    assert strict.exit_code == 1
    assert json.loads((tmp_path / "b.jsonl.summary.json").read_text())["errors"] == 1
    missing = runner.invoke(app, ["score", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "c.jsonl")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def _jrt(*args):
    return [sys.executable, "-c", "from jrt_cli.main import app; app()", *map(str, args)]


def test_kill_9_mid_run_then_rerun_loses_and_duplicates_nothing(tmp_path, tiny_dir):
    n = 24
    src = tmp_path / "in.jsonl"
    src.write_text(
        "".join(
            json.dumps({"id": f"r{i}", "context": f"Item {i}: {i * 7}.", "question": f"Item {i}?"}) + "\n"
            for i in range(n)
        )
    )
    out = tmp_path / "out.jsonl"
    cmd = _jrt("score", src, "--out", out, "--model", tiny_dir, "--device", "cpu", "--batch-size", "3",
               "--max-new-tokens", "4", "--repeat", "2")  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        if out.exists() and out.read_bytes().count(b"\n") >= 4:
            break
        if proc.poll() is not None:
            pytest.fail("scoring finished before it could be killed")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    data = out.read_bytes()
    killed_rows = data.count(b"\n")
    assert 4 <= killed_rows < n, "the kill must land mid-run"
    # a kill can also land inside a write; make sure the rerun sees a torn tail either way
    if data.endswith(b"\n"):
        last = data[:-1].rsplit(b"\n", 1)[-1]
        out.write_bytes(data[: len(data) - len(last) - 1] + last[: len(last) // 2])
    kept = {r["line"]: r for r in read_rows_lenient(out)}

    done = subprocess.run(cmd, capture_output=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    rows = read_rows(out)
    lines = [r["line"] for r in rows]
    assert lines == list(range(1, n + 1))  # 0 lost, 0 duplicated, input order
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(n)]
    assert all(r["status"] == "ok" for r in rows)
    for line, row in kept.items():
        assert rows[line - 1] == row
    summary = json.loads(out.with_name("out.jsonl.summary.json").read_text())
    assert summary["torn_lines_repaired"] == 1
    assert summary["done_before"] == len(kept) and summary["scored_now"] == n - len(kept)


def read_rows_lenient(path):
    """Complete lines only (what survives the repair)."""
    data = Path(path).read_bytes()
    return [json.loads(x) for x in data.split(b"\n")[:-1] if x.strip()]


def test_input_reading_handles_bom_crlf_blank_lines_and_limit(tmp_path):
    from jrt_prompt.scoring import ScoreConfig, parse_row, read_input

    src = tmp_path / "in.jsonl"
    src.write_bytes(
        b'\xef\xbb\xbf{"context": "c1", "question": "q1"}\r\n\r\n  \n{"context": "c2", "question": "q2", "id": 7}\r\n'
    )
    rows = read_input(src)
    assert [line for line, _ in rows] == [1, 4]
    config = ScoreConfig(input=src, out=tmp_path / "o.jsonl", repeat=1)
    first, second = (parse_row(line, raw, config) for line, raw in rows)
    assert first.error is None and first.id is None and first.context == "c1" and not first.question_first
    assert second.id == 7 and second.repeat == 1
    assert read_input(src, limit=1) == rows[:1]


def test_shards_merge_into_one_output_when_the_last_one_finishes(tmp_path, tiny):
    src = write_input(tmp_path / "in.jsonl", 7)
    out = tmp_path / "out.jsonl"
    first = score_file(src, out, model=tiny, max_new_tokens=2, shard=(1, 3))
    assert first.rows == 2 and not out.exists()  # rows 2 and 5 (0-based 1, 4)
    assert [r["line"] for r in read_rows(tmp_path / "out.jsonl.shard-1-of-3")] == [2, 5]
    with pytest.raises(JRTError, match="unfinished sharded run"):
        score_file(src, out, model=tiny, max_new_tokens=2)
    score_file(src, out, model=tiny, max_new_tokens=2, shard=(0, 3))
    assert not out.exists()
    score_file(src, out, model=tiny, max_new_tokens=2, shard=(2, 3))
    rows = read_rows(out)
    assert [r["line"] for r in rows] == list(range(1, 8)) and all(r["status"] == "ok" for r in rows)
    assert sorted(p.name for p in tmp_path.glob("out.jsonl*")) == [
        "out.jsonl",
        "out.jsonl.shard-0-of-3.summary.json",
        "out.jsonl.shard-1-of-3.summary.json",
        "out.jsonl.shard-2-of-3.summary.json",
        "out.jsonl.summary.json",
    ]
    assert json.loads((tmp_path / "out.jsonl.summary.json").read_text())["ok"] == 7
    again = score_file(src, out, model=tiny, max_new_tokens=2)  # a plain rerun finds everything done
    assert again.scored_now == 0 and again.done_before == 7


def test_two_shard_processes_at_once(tmp_path, tiny_dir):
    n = 10
    src = tmp_path / "in.jsonl"
    src.write_text(
        "".join(
            json.dumps({"id": f"r{i}", "context": f"Item {i}: {i}.", "question": "?"}) + "\n"
            for i in range(n)
        )
    )
    out = tmp_path / "out.jsonl"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    procs = [
        subprocess.Popen(
            _jrt(
                "score",
                src,
                "--out",
                out,
                "--model",
                tiny_dir,
                "--device",
                "cpu",
                "--max-new-tokens",
                "2",
                "--batch-size",
                "2",
                "--shard",
                f"{k}/2",
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )  # fmt: skip
        for k in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
    rows = read_rows(out)
    assert [r["line"] for r in rows] == list(range(1, n + 1))
    assert not list(tmp_path.glob("out.jsonl.shard-*-of-2")) and not list(tmp_path.glob("*.lock"))


def test_default_batch_size_is_left_to_the_generation_layer(tmp_path, tiny):
    """No --batch-size: rows go to generation AUTO_GROUP_ROWS at a time with batch_size=None (sized
    from free memory there), and the answers equal those of an explicit batch size."""
    from jrt_prompt import scoring

    src = write_input(tmp_path / "in.jsonl", 5)
    seen = []
    engine = scoring.engine_for(tiny)
    inner = engine.generate

    def spy(prompts, max_new_tokens):
        seen.append(len(prompts))
        return inner(prompts, max_new_tokens)

    engine = dataclasses.replace(engine, generate=spy)
    config = scoring.ScoreConfig(input=src, out=tmp_path / "auto.jsonl")
    assert config.batch_size is None
    scoring.score_jsonl(config, engine)
    assert seen == [5]  # one group: fewer rows than AUTO_GROUP_ROWS
    explicit = scoring.ScoreConfig(input=src, out=tmp_path / "two.jsonl", batch_size=2)
    scoring.score_jsonl(explicit, scoring.engine_for(tiny, batch_size=2))
    answers = lambda p: {r["id"]: r["prediction"] for r in read_rows(p)}  # noqa: E731
    assert answers(tmp_path / "auto.jsonl") == answers(tmp_path / "two.jsonl")
