"""`jrt synth train|eval`: small recall models trained from scratch on the synthetic tasks."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import auto_device, console, quiet_libraries, reports_errors


def _options(values: list[str]) -> dict:
    from jrt_prompt.errors import JRTError

    out = {}
    for item in values:
        if "=" not in item:
            raise JRTError(f"option {item!r} is not KEY=VALUE: write e.g. --option feature_dim=4")
        key, raw = item.split("=", 1)
        try:
            value = int(raw)
        except ValueError:
            try:
                value = float(raw)
            except ValueError:
                value = raw
        out[key.strip()] = value
    return out


@reports_errors
def train_command(
    out: Path = typer.Option(
        ..., "--out", help="Directory for the checkpoint (save_pretrained) and result.json."
    ),
    task: str = typer.Option("mqar", help="mqar, sd or kv-docs."),
    family: str = typer.Option(
        "based",
        help="mamba2, gla (CUDA only), based, jrt_rnn, attention (Llama) or conv_attention (the Based stack with softmax attention).",
    ),
    hidden_size: int = typer.Option(128, help="Model width."),
    layers: int = typer.Option(2, help="Number of blocks."),
    option: list[str] = typer.Option(
        [], "--option", help="Model option KEY=VALUE (state_size, expand_k, feature_dim, ...)."
    ),
    task_option: list[str] = typer.Option(
        [], "--task-option", help="Task option KEY=VALUE (num_pairs, num_queries, short_size, ...)."
    ),
    form: list[str] = typer.Option(
        ["default", "question_first", "jrt"], "--form", help="Prompt forms to train on."
    ),
    steps: int = typer.Option(5000, help="Maximum optimizer steps."),
    time_budget: float = typer.Option(
        0.0, help="Stop (and finish the schedule) after this many seconds; 0 = no limit."
    ),
    batch_size: int = typer.Option(256),
    lr: float = typer.Option(2e-3),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N."),
    eval_examples: int = typer.Option(1000, help="Held-out examples per form."),
    init_from: Path | None = typer.Option(
        None,
        "--init-from",
        help="Continue from a checkpoint of the same model (a folder this command wrote).",
    ),
) -> None:
    """Train one model, evaluate it in every prompt form, save it."""
    quiet_libraries()
    from jrt_prompt.synthetic.models import ModelSpec
    from jrt_prompt.synthetic.training import TrainConfig, run_job

    device = auto_device(device)

    config = TrainConfig(
        task=task,
        task_options=_options(task_option),
        model=ModelSpec(family, hidden_size, layers, _options(option)),
        forms=tuple(form),
        batch_size=batch_size,
        max_steps=steps,
        time_budget_s=time_budget,
        lr=lr,
        seed=seed,
        eval_examples=eval_examples,
        bf16=device.startswith("cuda"),
        init_from=str(init_from) if init_from is not None else None,
    )
    result = run_job(config, out, device=device, log=lambda m: console.print(m, highlight=False))
    _print_accuracy(result["accuracy"], result["state_floats"])
    console.print(f"saved to {out}")


@reports_errors
def eval_command(
    path: Path = typer.Argument(..., help="A directory written by `jrt synth train`."),
    examples: int = typer.Option(1000, help="Held-out examples per form."),
    seed: int = typer.Option(10_000, help="Seed of the held-out draw."),
    task_option: list[str] = typer.Option(
        [], "--task-option", help="Override a task size KEY=VALUE (e.g. num_pairs=32, min_fields=12)."
    ),
    found: bool = typer.Option(
        False,
        "--found",
        metavar="",
        help="Set disjointness: score 'names the shared element' instead of all marks.",
    ),
    device: str = typer.Option("auto", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N."),
) -> None:
    """Held-out accuracy of a trained model in the three prompt forms."""
    quiet_libraries()
    from jrt_prompt.synthetic.models import state_floats
    from jrt_prompt.synthetic.training import evaluate_saved

    device = auto_device(device)

    accuracy, model, lengths = evaluate_saved(
        path, num_examples=examples, seed=seed, device=device, task_options=_options(task_option), found=found
    )
    _print_accuracy(accuracy, state_floats(model, lengths["default"]))


def _print_accuracy(accuracy: dict, state: int) -> None:
    from rich.table import Table

    table = Table(title=f"held-out accuracy (state: {state:,} floats)")
    variants = list(next(iter(accuracy.values())))
    table.add_column("form")
    for v in variants:
        table.add_column(v, justify="right")
    for form, row in accuracy.items():
        table.add_row(form, *[f"{row[v] * 100:.1f}%" for v in variants])
    console.print(table)
