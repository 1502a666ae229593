"""The decode-model and eval-throughput benchmark jobs on tiny CPU models (the GPU runs them at size)."""

import pytest

from jrt_prompt.bench.decode_model import format_decode_model_table, run_decode_model_bench
from jrt_prompt.bench.eval_throughput import (
    format_eval_throughput_table,
    one_off_seconds,
    run_eval_throughput,
    synthetic_records,
)


def test_decode_model_bench_on_tiny_cpu_models():
    result = run_decode_model_bench(
        ["jrt-rnn-1.3b", "mamba2-1.3b", "transformer-1.3b", "no-such-model"],
        batches=[1, 3],
        prompt_tokens=12,
        decode_tokens=4,
        device="cpu",
        tiny=True,
        paths=("before", "model-step", "after"),
        log=lambda s: None,
    )
    rows = result["rows"]
    done = [r for r in rows if "tokens_per_s" in r]
    assert {(r["model"], r["batch"], r["path"]) for r in done} >= {
        ("jrt-rnn-1.3b", 3, "after"),
        ("mamba2-1.3b", 1, "before"),
        ("mamba2-1.3b", 3, "after"),
        ("mamba2-1.3b", 3, "model-step"),
    }
    assert not any(r.get("path") == "model-step" for r in rows if r["model"] != "mamba2-1.3b")
    assert all(r["tokens_per_s"] > 0 for r in done)
    methods = {(r["model"], r["path"]): r["method"] for r in rows if "method" in r}
    assert methods[("jrt-rnn-1.3b", "after")] == "decode engine"
    assert methods[("transformer-1.3b", "after")] == "static cache + torch.compile"
    missing = next(r for r in rows if r["model"] == "no-such-model")
    assert "not built" in missing["note"]
    table = format_decode_model_table(result)
    assert "| jrt-rnn-1.3b | 3 |" in table and "no-such-model" in table
    mamba_row = next(line for line in table.splitlines() if line.startswith("| mamba2-1.3b | 3 |"))
    assert mamba_row.count("|") == 9 and mamba_row.split("|")[4].strip() != "—"  # the model-step column


def test_synthetic_records_spread_lengths():
    records = synthetic_records(5, 100, 300)
    lengths = [len(c) + len(q) + 1 for c, q in records]
    assert lengths[0] <= 101 and 295 <= lengths[-1] <= 301
    assert lengths == sorted(lengths)
    assert all(q.split()[-1].rstrip("?") in c for c, q in records)  # the asked key is in the context


def test_eval_throughput_on_a_tiny_cpu_model():
    result = run_eval_throughput(
        ["based-1.3b"],
        prompts=4,
        min_tokens=20,
        max_tokens=60,
        max_new_tokens=5,
        device="cpu",
        tiny=True,
        log=lambda s: None,
    )
    row = result["rows"][0]
    assert row["path"] == "decode engine" and row["generations"] == 8
    assert row["seconds"] > 0 and row["prompts_per_s"] > 0 and 0 < row["answer_tokens"] <= 40
    assert row["first_pass_seconds"] > 0 and set(row["first_pass_seconds_per_form"]) == {"default", "twice"}
    assert row["one_off_seconds"] == one_off_seconds(row["first_pass_seconds"], row["seconds"])
    scaled = row["seconds"] * 12_000 / 4
    assert row["projected_paper_seconds"] == pytest.approx(row["one_off_seconds"] + scaled)
    assert "| based-1.3b | decode engine | 8 |" in format_eval_throughput_table(result)


def test_one_off_seconds_are_the_first_pass_less_the_timed_one():
    assert one_off_seconds(30.0, 12.5) == 17.5
    assert one_off_seconds(10.0, 10.4) == 0.0  # no one-off cost: noise never makes it negative


def test_engine_bench_commands_without_gpu_fail_with_one_line():
    from typer.testing import CliRunner

    from cli.main import app

    runner = CliRunner()
    for args in (["bench", "decode-model", "--batches", "1"], ["bench", "eval-throughput", "--prompts", "10"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "needs a CUDA GPU" in result.output
    result = runner.invoke(app, ["bench", "decode-model", "--batches", "x"])
    assert result.exit_code == 2 and "comma-separated integers" in result.output


def test_reuse_bench_on_tiny_cpu_models():
    from jrt_prompt.bench.reuse import format_reuse_table, run_reuse_bench

    result = run_reuse_bench(
        ["mamba-1.4b", "jrt-rnn-1.3b", "transformer-1.3b", "no-such-model"],
        questions=[1, 3],
        doc_tokens=40,
        question_tokens=6,
        answer_tokens=3,
        device="cpu",
        tiny=True,
        log=lambda s: None,
    )
    rows = result["rows"]
    done = {(r["model"], r["questions"], r["path"]) for r in rows if "questions_per_s" in r}
    for model in ("mamba-1.4b", "jrt-rnn-1.3b", "transformer-1.3b"):
        for path in ("scratch", "scratch-context-first", "reuse"):
            assert (model, 3, path) in done, (model, path, [r for r in rows if r["model"] == model])
    by = {(r["model"], r["questions"], r["path"]): r for r in rows if "questions" in r}
    assert by[("mamba-1.4b", 3, "scratch")]["prompt_tokens"] == 6 + 40 + 40 + 6 + 3  # question first, k = 2
    assert by[("mamba-1.4b", 3, "reuse")]["prompt_tokens"] == 40 + 40 + 6 + 2
    assert by[("jrt-rnn-1.3b", 3, "reuse")]["prompt_tokens"] == 40 + 6 + 1  # JRT-RNN: the plain prompt
    recurrent = by[("mamba-1.4b", 3, "reuse")]["state_bytes"]
    kv = by[("transformer-1.3b", 3, "reuse")]["state_bytes"]
    assert by[("transformer-1.3b", 3, "reuse")]["cache"] == "prefix KV cache" and recurrent > 0 and kv > 0
    for (model, q, path), r in by.items():  # reuse rows split their time: one read, the answers
        if "questions_per_s" in r:
            assert ("read_seconds" in r) == (path == "reuse"), (model, q, path)
            if path == "reuse":
                assert 0 < r["read_seconds"] and 0 < r["ask_seconds"]
                assert r["read_seconds"] + r["ask_seconds"] < 3 * r["seconds"]  # medians of the same calls
    table = format_reuse_table(result)
    assert "| mamba-1.4b | 3 |" in table and "no-such-model" in table and "MiB" in table
    assert all(line.count("|") == 10 for line in table.splitlines())  # every row has every column
