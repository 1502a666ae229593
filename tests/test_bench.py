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
    result = run_model_bench(
        [16], models=MODELS, device="cpu", tiny=True, decode_tokens=2, reps=1, log=lambda s: None
    )
    by_model = {r["model"]: r for r in result["rows"]}
    assert set(by_model) == set(MODELS)
    for name, row in by_model.items():
        assert "note" not in row, (name, row.get("note"))
        assert row["prefill_ms"] > 0 and row["decode_tokens_per_s"] > 0
    assert by_model["based-1.3b"]["tokens_read"] == 32 and by_model["jrt-rnn-1.3b"]["tokens_read"] == 16
    assert "| jrt-rnn-1.3b | 16 | 16 |" in format_model_table(result)
    json.dumps(result)  # serialisable as written by --json
    with pytest.raises(JRTError, match="unknown model"):
        run_model_bench([16], models=["gpt-9"], device="cpu", tiny=True)


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
