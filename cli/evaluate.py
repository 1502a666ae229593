"""`jrt eval` (the paper's recall tasks, default vs JRT prompt) and `jrt report` (tables, charts)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import (
    DeviceOption,
    DtypeOption,
    ModelOption,
    console,
    err_console,
    model_dtype,
    progress,
    quiet_libraries,
    reports_errors,
    split_ints,
    split_list,
    usage_error,
)

METRICS = ("contains", "exact_match", "f1")
TASK_HELP = (
    "Tasks, comma-separated or repeated: swde, fda, squad, triviaqa, drop, nq512, nq1024, nq2048, "
    "kv-docs; paper = the six of Table 1."
)


def results_table(results: dict, metric: str = "contains"):
    from rich.table import Table

    from jrt_prompt.evaluation import summary_rows
    from jrt_prompt.report import model_label

    table = Table(title=f"{model_label(results['model'])} — {metric} (%, ± standard error)")
    table.add_column("task")
    table.add_column("n", justify="right")
    table.add_column("skipped", justify="right")
    rows = summary_rows(results, metric)
    forms = list(dict.fromkeys(f for r in rows for f in r["forms"]))
    for form in forms:
        table.add_column(
            "default" if form == "default" else ("JRT" if form == "jrt" else form), justify="right"
        )
    has_delta = "default" in forms and "jrt" in forms
    if has_delta:
        table.add_column("Δ", justify="right")
    for row in rows:
        cells = [row["task"], str(row["n"]), str(row["skipped"])]
        cells += [_cell(row.get(f), row.get(f"{f}_stderr")) for f in forms]
        if has_delta:
            cells.append(f"{row['delta']:+.1f}" if "delta" in row else "–")
        table.add_row(*cells)
    if len(rows) > 1:
        cells = ["average", str(sum(r["n"] for r in rows)), str(sum(r["skipped"] for r in rows))]
        for f in forms:
            values = [r[f] for r in rows if r.get(f) is not None]
            cells.append(f"{sum(values) / len(values):.1f}" if values else "–")
        if has_delta:
            deltas = [r["delta"] for r in rows if "delta" in r]
            cells.append(f"{sum(deltas) / len(deltas):+.1f}" if deltas else "–")
        table.add_row(*cells, style="bold")
    return table


def _cell(value, stderr) -> str:
    if value is None:
        return "–"
    return f"{value:.1f} ± {stderr:.1f}" if stderr is not None else f"{value:.1f}"


@reports_errors
def eval_command(
    task: Annotated[
        list[str] | None,
        typer.Option("--tasks", "--task", "-t", help=TASK_HELP, show_default=False),
    ] = None,
    model: ModelOption = "demo",
    repeat: Annotated[
        list[str] | None,
        typer.Option(
            "--repeat",
            "-k",
            help="Prompt forms, comma-separated or repeated: 1 = default, 2 = JRT, k = k copies [default: 1,2].",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="First N rows of each task (N >= 1).")] = None,
    data: Annotated[
        list[str] | None,
        typer.Option(
            help="Local data: TASK=PATH, or a directory of <task>.jsonl/.parquet (repeatable); else the hub dataset."
        ),
    ] = None,
    output_path: Annotated[
        Path,
        typer.Option(
            "--output-path",
            "--out",
            "-o",
            help="Directory: each run writes <model>/results_<time>.json and samples_<task>_<time>.jsonl "
            "there. A path ending in .json names the results file itself. Nothing is overwritten.",
        ),
    ] = Path("results"),
    context_length: Annotated[
        int, typer.Option(help="The paper's context length in tokens (0: no truncation).")
    ] = 1000,
    answer_length: Annotated[
        int, typer.Option(help="Token budget kept free for the answer when truncating.")
    ] = 50,
    max_new_tokens: Annotated[
        int, typer.Option(help="Tokens generated per example, >= 1 (the paper: 48).")
    ] = 48,
    batch_size: Annotated[
        int | None,
        typer.Option(help="Prompts per batch, >= 1 (length-sorted); default: sized from free GPU memory, 8 on CPU."),
    ] = None,
    max_prompt_tokens: Annotated[
        int | None, typer.Option(help="Cut longer prompts from the left (default: model limit).")
    ] = None,
    save_prompts: Annotated[
        bool, typer.Option("--save-prompts", metavar="", help="Store each prompt in the samples files.")
    ] = False,
    mode: Annotated[
        str,
        typer.Option(
            help="default, or reference: generate as the paper's harness did (to match its numbers)."
        ),
    ] = "default",
    metric: Annotated[
        str, typer.Option(help="Metric shown in the table: contains, exact_match or f1.")
    ] = "contains",
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    """Run the paper's recall tasks with MODEL in the default and JRT prompt forms."""
    tasks = split_list(task)
    if not tasks:
        raise usage_error("pass at least one task: --tasks swde,fda (or --task swde --task fda)")
    repeats = split_ints(repeat, "--repeat") or [1, 2]
    if any(r < 1 for r in repeats):
        raise usage_error(f"--repeat values must be >= 1 (1 = default prompt, 2 = JRT); got {repeats}")
    if metric not in METRICS:
        raise usage_error(f"--metric {metric!r} is unknown: use one of {', '.join(METRICS)}")
    if mode not in ("default", "reference"):
        raise usage_error(f"--mode {mode!r} is unknown: use default or reference")
    quiet_libraries()
    from jrt_prompt.evaluation import (
        EvalConfig,
        check_config,
        evaluate,
        resolve_data,
        results_path,
        write_results,
    )

    config = EvalConfig(
        model=model,
        tasks=tuple(tasks),
        repeats=tuple(dict.fromkeys(repeats)),
        limit=limit,
        data=resolve_data(tasks, data or []),
        context_length=None if context_length == 0 else context_length,
        answer_length=answer_length,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        max_prompt_tokens=max_prompt_tokens,
        save_prompts=save_prompts,
        mode=mode,
        device=device,
        dtype=model_dtype(dtype),
    )
    check_config(config)
    results_path(output_path, model)  # an existing results file fails now, not after the run
    with progress("evaluating") as display:
        results = evaluate(config, on_start=display.start, on_progress=display.advance)
    written = write_results(results, output_path)
    console.print(results_table(results, metric))
    err_console.print(f"[dim]results: {written}[/]", highlight=False, soft_wrap=True)


@reports_errors
def report_command(
    results: Annotated[list[Path], typer.Argument(help="Result files written by `jrt eval`.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the Markdown table here too.")
    ] = None,
    png: Annotated[
        Path, typer.Option(help="Bar chart (PNG) of every prompt form per task and model.")
    ] = Path("report.png"),
    metric: Annotated[str, typer.Option(help="contains, exact_match or f1.")] = "contains",
) -> None:
    """Turn `jrt eval` result files into a Markdown table and a PNG bar chart."""
    if metric not in METRICS:
        raise usage_error(f"--metric {metric!r} is unknown: use one of {', '.join(METRICS)}")
    from jrt_prompt.report import bar_chart, load_results, markdown_table

    docs = load_results(results)
    text = markdown_table(docs, metric)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    chart = bar_chart(docs, png, metric)
    console.print(text, markup=False, highlight=False)
    err_console.print(f"[dim]chart: {chart}[/]", highlight=False)
