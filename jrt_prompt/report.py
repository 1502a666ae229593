"""``jrt report``: result files of ``jrt eval`` -> a Markdown table and a bar chart (PNG).

One table row per (model, task) with the metric of the default prompt, of the JRT prompt and the
difference; an "average" row per model over the tasks where both forms ran. The chart groups bars
by task: for each model a light bar (default) next to a dark bar (JRT).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import JRTError
from .evaluation import RESULTS_FORMAT, summary_rows
from .tasks.metrics import METRIC_NAMES


def load_results(paths) -> list[dict[str, Any]]:
    """Read result files written by ``jrt eval``; a file of another kind is a one-line error."""
    out = []
    for path in paths:
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise JRTError(
                f"results file {path} does not exist; pass files written by `jrt eval --out`"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise JRTError(
                f"results file {path} is not JSON ({exc}); pass files written by `jrt eval --out`"
            ) from None
        if not isinstance(doc, dict) or doc.get("format") != RESULTS_FORMAT or "results" not in doc:
            raise JRTError(f"{path} is not a `jrt eval` results file (format {RESULTS_FORMAT} expected)")
        out.append(doc)
    if not out:
        raise JRTError("no results file given: pass one or more files written by `jrt eval --out`")
    return out


def model_label(name: str) -> str:
    """A local checkpoint path is shown by its directory name; roster names and hub ids as they are."""
    return Path(name).name if name.startswith(("/", ".", "~")) else name


def table_rows(docs: list[dict[str, Any]], metric: str = "contains") -> list[dict[str, Any]]:
    """Flat rows (model, task, default, jrt, delta, n), plus one average row per model.

    The average is taken over the tasks every model ran in both forms, so models are compared on
    the same tasks.
    """
    if metric not in METRIC_NAMES:
        raise JRTError(f"metric {metric!r} is unknown; use one of {', '.join(METRIC_NAMES)}")
    per_model = [[dict(r, model=model_label(d["model"])) for r in summary_rows(d, metric)] for d in docs]
    common = set.intersection(*({r["task"] for r in rows if "delta" in r} for rows in per_model))
    out = []
    for model_rows in per_model:
        out += model_rows
        both = [r for r in model_rows if r["task"] in common]
        if len(both) > 1:
            out.append(
                {
                    "model": model_rows[0]["model"],
                    "task": "average",
                    "tasks": len(both),
                    "n": sum(r["n"] for r in both),
                    "default": sum(r["default"] for r in both) / len(both),
                    "jrt": sum(r["jrt"] for r in both) / len(both),
                    "delta": sum(r["delta"] for r in both) / len(both),
                }
            )
    return out


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.1f}"


def markdown_table(docs: list[dict[str, Any]], metric: str = "contains") -> str:
    lines = [
        f"| model | task | n | default ({metric}) | JRT ({metric}) | Δ |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in table_rows(docs, metric):
        delta = r.get("delta")
        delta_text = "–" if delta is None else f"{delta:+.1f}"
        task = f"**average** ({r['tasks']} tasks)" if r["task"] == "average" else r["task"]
        lines.append(
            f"| {r['model']} | {task} | {r['n']} | {_fmt(r.get('default'))} | {_fmt(r.get('jrt'))} | {delta_text} |"
        )
    return "\n".join(lines) + "\n"


def bar_chart(docs: list[dict[str, Any]], path: str | os.PathLike, metric: str = "contains") -> Path:
    """Grouped bars: per task, default and JRT for every model. Returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table_rows(docs, metric)  # the "average" group comes last
    tasks = list(dict.fromkeys(r["task"] for r in rows if r["task"] != "average"))
    tasks += ["average"] if any(r["task"] == "average" for r in rows) else []
    models = list(dict.fromkeys(r["model"] for r in rows))
    lookup = {(r["model"], r["task"]): r for r in rows}
    bars_per_task = 2 * len(models)
    width = 0.8 / bars_per_task
    colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(tasks) * max(1, len(models))), 4.0))
    for m, model in enumerate(models):
        for f, form in enumerate(("default", "jrt")):
            xs, ys = [], []
            for t, task in enumerate(tasks):
                value = lookup.get((model, task), {}).get(form)
                if value is not None:
                    xs.append(t - 0.4 + width * (2 * m + f + 0.5))
                    ys.append(value)
            ax.bar(
                xs,
                ys,
                width,
                color=colors(m % 10),
                alpha=0.45 if form == "default" else 1.0,
                label=f"{model} · {'default' if form == 'default' else 'JRT'}",
            )
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Default vs JRT prompt ({metric})")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
