"""Entry point of the `jrt` command: one typer app; every command is registered here, in one place.

The command modules define plain functions and import nothing from this module (no import
circle). Neither they nor this module import torch at import time, so ``jrt --help``,
``jrt --version`` and usage errors answer without loading it.
"""

from __future__ import annotations

import os

import typer

from . import bench, evaluate, models, run, score, synth

# Quiet library chatter (weight-loading progress bars, kernel fall-back notices) on the command line.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

# CPU threads of torch's intra-op pool. One thread per process: on a loaded machine (other jobs,
# other users) more threads than free cores make greedy decoding many times slower, while on an
# idle machine the small models this command runs gain little from more. JRT_THREADS=N (or
# OMP_NUM_THREADS=N) chooses otherwise. Set before torch is imported, which reads it once.
DEFAULT_THREADS = "1"
os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("JRT_THREADS", DEFAULT_THREADS))


def _version(value: bool) -> None:
    if value:
        from jrt_prompt import __version__

        typer.echo(f"jrt-prompt {__version__}")
        raise typer.Exit()


def _main(
    version: bool = typer.Option(
        False,
        "--version",
        metavar="",
        callback=_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """Make recurrent language models recall their prompt: JRT-Prompt and JRT-RNN."""


app = typer.Typer(
    name="jrt",
    help="Make recurrent language models recall their prompt: JRT-Prompt and JRT-RNN.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    callback=_main,
)

app.command("run")(run.run_command)
app.command("score")(score.score_command)
app.command("eval")(evaluate.eval_command)
app.command("report")(evaluate.report_command)
app.command("models")(models.models_command)

bench_app = typer.Typer(
    help="Benchmarks on a CUDA GPU: prefill and decode kernels against FlashAttention-2, whole models.",
    no_args_is_help=True,
)
bench_app.command("prefill")(bench.prefill_command)
bench_app.command("decode")(bench.decode_command)
bench_app.command("model")(bench.model_command)
bench_app.command("decode-model")(bench.decode_model_command)
bench_app.command("eval-throughput")(bench.eval_throughput_command)
bench_app.command("reuse")(bench.reuse_command)
app.add_typer(bench_app, name="bench")

synth_app = typer.Typer(
    help="Synthetic recall tasks (MQAR, set disjointness, kv-docs): train and evaluate small models.",
    no_args_is_help=True,
)
synth_app.command("train")(synth.train_command)
synth_app.command("eval")(synth.eval_command)
app.add_typer(synth_app, name="synth")


def main() -> None:  # pragma: no cover - console script shim
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
