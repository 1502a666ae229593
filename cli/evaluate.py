"""`jrt eval` (the paper's recall tasks, default vs JRT prompt) and `jrt report` (tables, charts)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from jrt_prompt.evaluation import EvalConfig, evaluate, resolve_data, summary_rows, write_results
from jrt_prompt.report import bar_chart, load_results, markdown_table, model_label

from ._common import DeviceOption, DtypeOption, ModelOption, console, err_console, model_dtype, reports_errors
from .main import app
from .score import RowsPerSecond


def results_table(results: dict, metric: str = "contains") -> Table:
    table = Table(title=f"{model_label(results['model'])} — {metric} (%)")
    table.add_column("task")
    table.add_column("n", justify="right")
    table.add_column("skipped", justify="right")
    forms = list(dict.fromkeys(r["form"] for r in results["results"]))
    for form in forms:
        table.add_column(
            "default" if form == "default" else ("JRT" if form == "jrt" else form), justify="right"
        )
    has_delta = "default" in forms and "jrt" in forms
    if has_delta:
        table.add_column("Δ", justify="right")
    rows = summary_rows(results, metric)
    for row in rows:
        cells = [row["task"], str(row["n"]), str(row["skipped"])]
        cells += [f"{row[f]:.1f}" if f in row else "–" for f in forms]
        if has_delta:
            cells.append(f"{row['delta']:+.1f}" if "delta" in row else "–")
        table.add_row(*cells)
    if len(rows) > 1:
        cells = ["average", str(sum(r["n"] for r in rows)), str(sum(r["skipped"] for r in rows))]
        for f in forms:
            values = [r[f] for r in rows if f in r]
            cells.append(f"{sum(values) / len(values):.1f}" if values else "–")
        if has_delta:
            deltas = [r["delta"] for r in rows if "delta" in r]
            cells.append(f"{sum(deltas) / len(deltas):+.1f}" if deltas else "–")
        table.add_row(*cells, style="bold")
    return table


@app.command("eval")
@reports_errors
def eval_command(
    task: Annotated[
        list[str],
        typer.Option(
            "--task",
            "-t",
            help="Task (repeatable): swde, fda, squad, triviaqa, drop, nq512, nq1024, nq2048, kv-docs; paper = the six of Table 1.",
        ),
    ],
    model: ModelOption = "demo",
    repeat: Annotated[
        list[int] | None,
        typer.Option("--repeat", "-k", help="Prompt form (repeatable): 1 = default, 2 = JRT."),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="First N rows of each task.")] = None,
    data: Annotated[
        list[str] | None,
        typer.Option(
            help="Local data: TASK=PATH, or a directory of <task>.jsonl/.parquet (repeatable); else the hub dataset."
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Results JSON.")] = Path("results.json"),
    context_length: Annotated[
        int, typer.Option(help="The paper's context length in tokens (0: no truncation).")
    ] = 1000,
    answer_length: Annotated[
        int, typer.Option(help="Token budget kept free for the answer when truncating.")
    ] = 50,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens generated per example (the paper: 48).")] = 48,
    batch_size: Annotated[int, typer.Option(help="Prompts per batch (length-sorted).")] = 8,
    max_prompt_tokens: Annotated[
        int | None, typer.Option(help="Cut longer prompts from the left (default: model limit).")
    ] = None,
    save_prompts: Annotated[
        bool, typer.Option("--save-prompts", help="Store each prompt in the results.")
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
    config = EvalConfig(
        model=model,
        tasks=tuple(task),
        repeats=tuple(repeat or (1, 2)),
        limit=limit,
        data=resolve_data(task, data or []),
        context_length=context_length or None,
        answer_length=answer_length,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        max_prompt_tokens=max_prompt_tokens,
        save_prompts=save_prompts,
        mode=mode,
        device=device,
        dtype=model_dtype(dtype),
    )
    progress = Progress(
        TextColumn("[bold]evaluating"),
        BarColumn(),
        MofNCompleteColumn(),
        RowsPerSecond(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err_console,
    )
    state: dict = {}
    with progress:
        results = evaluate(
            config,
            on_start=lambda total: state.setdefault("task", progress.add_task("examples", total=total)),
            on_progress=lambda n: progress.advance(state["task"], n),
        )
    write_results(results, out)
    console.print(results_table(results, metric))
    console.print(f"[dim]results: {out}[/]")


@app.command("report")
@reports_errors
def report_command(
    results: Annotated[list[Path], typer.Argument(help="Result files written by `jrt eval`.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the Markdown table here too.")
    ] = None,
    png: Annotated[Path, typer.Option(help="Bar chart of default vs JRT per task and model.")] = Path(
        "report.png"
    ),
    metric: Annotated[str, typer.Option(help="contains, exact_match or f1.")] = "contains",
) -> None:
    """Turn `jrt eval` result files into a Markdown table and a PNG bar chart."""
    docs = load_results(results)
    text = markdown_table(docs, metric)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    chart = bar_chart(docs, png, metric)
    console.print(text, markup=False, highlight=False)
    console.print(f"[dim]chart: {chart}[/]")
