"""``jrt report``: result files of ``jrt eval`` -> a Markdown table and a bar chart (PNG).

One table row per (model, task) with the metric of every prompt form that ran (default = 1 copy,
JRT = 2 copies, ``jrt-k3`` = 3 copies, ...) with its standard error, and JRT minus default; an
"average" row per model over the tasks every model ran in both forms. The chart groups bars by
task: one colour per prompt form, one hatch per model, each bar labelled with its value; a form
that was not measured is marked "n/a", so it never looks like a score of 0.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import JRTError
from .evaluation import OLD_FORMATS, RESULTS_FORMAT, check_metric, summary_rows, upgrade_results


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
        if (
            not isinstance(doc, dict)
            or doc.get("format") not in (RESULTS_FORMAT, *OLD_FORMATS)
            or "results" not in doc
        ):
            raise JRTError(
                f"{path} is not a `jrt eval` results file (format {RESULTS_FORMAT} expected); "
                "pass the results_<time>.json files, not the samples files"
            )
        out.append(upgrade_results(doc))
    if not out:
        raise JRTError("no results file given: pass one or more files written by `jrt eval --out`")
    return out


def model_label(name: str) -> str:
    """A local checkpoint path is shown by its directory name; roster names and hub ids as they are."""
    return Path(name).name if name.startswith(("/", ".", "~")) else name


def form_label(form: str) -> str:
    return {"default": "default", "jrt": "JRT"}.get(form, form.replace("jrt-k", "JRT k="))


def _form_order(form: str) -> tuple[int, str]:
    if form == "default":
        return (1, form)
    if form == "jrt":
        return (2, form)
    digits = form.removeprefix("jrt-k")
    return (int(digits), form) if digits.isdigit() else (10**6, form)


def forms_of(docs: list[dict[str, Any]], metric: str = "contains") -> list[str]:
    """Every prompt form in the results, ordered by the number of copies of the context."""
    forms = {f for d in docs for r in summary_rows(d, metric) for f in r["forms"]}
    return sorted(forms, key=_form_order)


def table_rows(docs: list[dict[str, Any]], metric: str = "contains") -> list[dict[str, Any]]:
    """Flat rows (model, task, n, one value per form, delta), plus one average row per model.

    The average is taken over the tasks every model ran in both the default and the JRT form, so
    models are compared on the same tasks.
    """
    check_metric(metric)
    forms = forms_of(docs, metric)
    per_model = [[dict(r, model=model_label(d["model"])) for r in summary_rows(d, metric)] for d in docs]
    common = set.intersection(*({r["task"] for r in rows if "delta" in r} for rows in per_model))
    out = []
    for model_rows in per_model:
        out += model_rows
        both = [r for r in model_rows if r["task"] in common]
        if len(both) > 1:
            average = {
                "model": model_rows[0]["model"],
                "task": "average",
                "tasks": len(both),
                "n": sum(r["n"] for r in both),
                "delta": sum(r["delta"] for r in both) / len(both),
            }
            for form in forms:
                values = [r.get(form) for r in both]
                if all(v is not None for v in values):
                    average[form] = sum(values) / len(values)
            out.append(average)
    return out


def _fmt(value, stderr=None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f} ± {stderr:.1f}" if stderr is not None else f"{value:.1f}"


def markdown_table(docs: list[dict[str, Any]], metric: str = "contains") -> str:
    """The table; a cell is ``value ± standard error`` in percent, "–" where the form did not run."""
    forms = forms_of(docs, metric)
    delta = "default" in forms and "jrt" in forms
    head = ["model", "task", "n", *(f"{form_label(f)} ({metric})" for f in forms)] + (["Δ"] if delta else [])
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for r in table_rows(docs, metric):
        task = f"**average** ({r['tasks']} tasks)" if r["task"] == "average" else r["task"]
        cells = [r["model"], task, str(r["n"])]
        cells += [_fmt(r.get(f), r.get(f"{f}_stderr")) for f in forms]
        if delta:
            cells.append("–" if r.get("delta") is None else f"{r['delta']:+.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_HATCHES = ("", "//", "..", "xx", "\\\\", "++", "oo", "--")


def bar_chart(docs: list[dict[str, Any]], path: str | os.PathLike, metric: str = "contains") -> Path:
    """Grouped bars: per task, one bar per (model, form). Returns the PNG path.

    Colour = prompt form, hatch = model; every bar carries its value (and Δ over the default on
    the JRT bar); an unmeasured form is an "n/a" mark at the axis; the title names the models and
    the number of examples.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = table_rows(docs, metric)  # the "average" group comes last
    forms = forms_of(docs, metric)
    tasks = list(dict.fromkeys(r["task"] for r in rows if r["task"] != "average"))
    tasks += ["average"] if any(r["task"] == "average" for r in rows) else []
    models = list(dict.fromkeys(r["model"] for r in rows))
    lookup = {(r["model"], r["task"]): r for r in rows}
    slots = max(1, len(forms) * len(models))
    width = 0.8 / slots
    colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * slots * len(tasks) + 2.5), 4.5))
    for m, model in enumerate(models):
        for f, form in enumerate(forms):
            slot = m * len(forms) + f
            for t, task in enumerate(tasks):
                row = lookup.get((model, task), {})
                x = t - 0.4 + width * (slot + 0.5)
                value = row.get(form)
                if value is None:
                    ax.text(x, 1, "n/a", ha="center", va="bottom", fontsize=6, rotation=90, color="grey")
                    continue
                ax.bar(
                    x,
                    max(value, 0.4),  # a thin sliver keeps a 0 visible; its label says 0.0
                    width,
                    color=colors(f % 10),
                    hatch=_HATCHES[m % len(_HATCHES)],
                    edgecolor="black",
                    linewidth=0.5,
                )
                stderr = row.get(f"{form}_stderr")
                if stderr is not None:
                    ax.errorbar(x, value, yerr=stderr, color="black", linewidth=0.7, capsize=1.5)
                label = f"{value:.1f}"
                if form == "jrt" and row.get("delta") is not None:
                    label += f"\n({row['delta']:+.1f})"
                ax.text(x, value + (stderr or 0) + 1, label, ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(tasks)))
    ns = {}
    for r in rows:
        if r["task"] != "average":
            ns.setdefault(r["task"], set()).add(r["n"])
    ax.set_xticklabels(
        [t if t == "average" else f"{t}\nn={'/'.join(str(n) for n in sorted(ns.get(t, ())))}" for t in tasks]
    )
    ax.set_ylabel(f"{metric} (%)")
    ax.set_ylim(0, 110)
    ax.set_title(f"{', '.join(models)}: prompt forms compared ({metric}, n = examples per task)", fontsize=9)
    handles = [
        Patch(facecolor=colors(f % 10), edgecolor="black", label=form_label(form))
        for f, form in enumerate(forms)
    ]
    if len(models) > 1:
        handles += [
            Patch(facecolor="white", edgecolor="black", hatch=_HATCHES[m % len(_HATCHES)], label=model)
            for m, model in enumerate(models)
        ]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
