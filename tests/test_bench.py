"""Benchmark jobs: tables, plot, command line, and the whole-model job on tiny CPU models."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from jrt_prompt.bench import format_decode_table, format_prefill_table, plot_prefill
from jrt_prompt.bench.model import MODELS, format_model_table, run_model_bench
from jrt_prompt.errors import JRTError


def _prefill_result():
    rows = []
    for n, fa2, based in ((2048, 0.5, 0.25), (32768, 100.0, 5.0)):
        rows.append({"n": n, "tokens_read": n, "method": "fa2", "ms": fa2, "speedup_vs_fa2": 1.0})
        rows.append({"n": n, "tokens_read": n, "method": "based", "ms": based, "speedup_vs_fa2": fa2 / based})
        rows.append(
            {
                "n": n,
                "tokens_read": n,
                "method": "fla_fused_chunk_based",
                "ms": None,
                "note": "not installed: fla",
            }
        )
    shape = {
        "batch": 16,
        "heads": 16,
        "head_dim": 64,
        "feature_dim": 16,
        "dtype": "bfloat16",
        "enc_fraction": 1.0,
    }
    return {"env": {}, "shape": shape, "rows": rows}


def test_prefill_table_shows_ms_and_speedup():
    table = format_prefill_table(_prefill_result())
    lines = table.splitlines()
    assert lines[0].startswith("| N | SDPA flash (FA2)")
    assert "| 32,768 | 100.0 ms | 5.00 ms (20.0×) | — (not installed: fla) |" in table
    assert len(lines) == 4


def test_prefill_plot_is_written(tmp_path):
    path = plot_prefill(_prefill_result(), tmp_path / "p.png")
    assert path.stat().st_size > 1000


def test_decode_table():
    rows = [
        {
            "batch": 64,
            "method": "sdpa_kv_cache",
            "us_graph": 1800.0,
            "tokens_per_s": 64 / 1.8e-3,
            "speedup_vs_sdpa": 1.0,
        },
        {
            "batch": 64,
            "method": "linear_step_fused",
            "us_graph": 30.0,
            "tokens_per_s": 64 / 3e-5,
            "speedup_vs_sdpa": 60.0,
        },
    ]
    table = format_decode_table({"rows": rows})
    assert "| 64 | 1800.0 (35,556) | 30.0 (2,133,333) | 60.0× |" in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_commands_without_gpu_fail_with_one_line():
    from cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["bench", "prefill", "--lengths", "2048"])
    assert result.exit_code == 2
    assert "needs a CUDA GPU" in result.output
    result = runner.invoke(app, ["bench", "decode", "--batches", "x"])
    assert result.exit_code == 2 and "comma-separated integers" in result.output


def test_model_bench_on_tiny_cpu_models(tmp_path):
    cpu_models = [m for m in MODELS if m != "gla-1.3b"]  # fla's GLA runs on CUDA only
    result = run_model_bench(
        [16], models=cpu_models + ["gla-1.3b"], batches=[1, 2], device="cpu", tiny=True, reps=1,
        log=lambda s: None,
    )
    rows = result["rows"]
    by_key = {(r["model"], r.get("tokens_read"), r.get("batch")): r for r in rows}
    for name in cpu_models:
        for tokens in (16, 32) if name not in ("jrt-rnn-1.3b", "transformer-1.3b") else (16,):
            for batch in (1, 2):
                row = by_key[(name, tokens, batch)]
                assert "note" not in row, (name, row.get("note"))
                assert row["ms"] > 0 and 0 < row["floor_pct"]
                assert row["ms_range"][0] <= row["ms"] <= row["ms_range"][1]
                assert row["transformer_ms"] == by_key[("transformer-1.3b", 16, batch)]["ms"]
    # the Mamba families' engine prefill is written out: their model forward is timed beside it
    assert by_key[("mamba-1.4b", 16, 1)]["forward_ms"] > 0 and by_key[("mamba2-1.3b", 32, 2)]["forward_ms"] > 0
    assert "forward_ms" not in by_key[("jrt-rnn-1.3b", 16, 1)]
    # transformers' own fallback is timed for the Mamba families, beside this project's path
    assert by_key[("mamba-1.4b", 32, 1)]["before_ms"] > 0 and by_key[("mamba2-1.3b", 16, 2)]["before_ms"] > 0
    assert ("jrt-rnn-1.3b", 32, 1) not in by_key
    assert any(r["model"] == "gla-1.3b" and "note" in r for r in rows)  # one family failing is a row
    table = format_model_table(result)
    assert "| jrt-rnn-1.3b | 1 | 16 | 16 |" in table and "| mamba-1.4b | 2 | 16 | 32 |" in table
    json.dumps(result)  # serialisable as written by --json
    from jrt_prompt.bench.model import plot_model_bench

    assert plot_model_bench(result, tmp_path / "m.png") and (tmp_path / "m.png").stat().st_size > 0
    with pytest.raises(JRTError, match="unknown model"):
        run_model_bench([16], models=["gpt-9"], device="cpu", tiny=True)
    with pytest.raises(ValueError, match="time_budget_s=-1 must be positive"):
        run_model_bench([16], models=["mamba-1.4b"], device="cpu", tiny=True, time_budget_s=-1)
    with pytest.raises(ValueError, match="reps=0"):
        run_model_bench([16], models=["mamba-1.4b"], device="cpu", tiny=True, reps=0)


def test_ablation_variants_still_cut_the_shipped_kernel():
    """scripts/ablate_prefill.py edits the kernel source by pattern: every variant must still
    find its part (it raises otherwise) and leave valid Python that differs from the full kernel."""
    import ast
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "ablate_prefill.py"
    spec = importlib.util.spec_from_file_location("ablate_prefill", path)
    ablate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablate)
    full = ablate.variant_source("full")
    for name in ablate.VARIANTS:
        source = ablate.variant_source(name)
        ast.parse(source)
        assert (source == full) == (not ablate.VARIANTS[name]), name  # only the full kernels cut nothing
    assert (
        "_cyc_group(" not in ablate.variant_source("no_pair_groups").split("def _chunked_cyclic_kernel(")[1]
    )
