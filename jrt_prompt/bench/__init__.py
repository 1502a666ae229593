"""Benchmarks: kernel prefill and decode against attention baselines, and whole-model throughput.

Each job is a plain function returning a JSON-serialisable dict; the `jrt bench` commands and
scripts/bench_prefill.py only parse options, call it and print.
"""

from .decode import run_decode_bench
from .prefill import run_prefill_bench
from .report import format_decode_table, format_prefill_table, plot_prefill

__all__ = [
    "format_decode_table",
    "format_prefill_table",
    "plot_prefill",
    "run_decode_bench",
    "run_prefill_bench",
]
