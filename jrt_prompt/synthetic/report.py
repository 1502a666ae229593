"""Tables and plots of synthetic results (used by scripts/train_synthetic.py and docs/quality.md)."""

from __future__ import annotations

from pathlib import Path

FORMS = ("default", "question_first", "jrt")
TASK_ORDER = {"mqar": 0, "sd": 1, "kv-docs": 2}
FAMILY_ORDER = {"mamba2": 0, "gla": 1, "based": 2, "jrt_rnn": 3, "conv_attention": 4, "attention": 5}


def _key(r: dict):
    return (TASK_ORDER.get(r["config"]["task"], 9), FAMILY_ORDER.get(r["family"], 9), r["state_floats"])


def markdown_table(results: list[dict]) -> str:
    """One row per (model, variant): parameters, state, steps, accuracy per form, JRT - default."""
    lines = [
        "| task | model | params | state (floats) | steps | variant | default | question-first | JRT | JRT − default |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in sorted(results, key=_key):
        acc = r["accuracy"]
        for variant in acc["default"]:
            vals = [acc[f][variant] * 100 for f in FORMS]
            lines.append(
                f"| {r['config']['task']} | {r['label']} | {r['parameters']:,} | {r['state_floats']:,} | "
                f"{r['history']['steps']} | {variant} | {vals[0]:.1f} | {vals[1]:.1f} | {vals[2]:.1f} | "
                f"{vals[2] - vals[0]:+.1f} |"
            )
    return "\n".join(lines)


def plot_accuracy_vs_state(results: list[dict], path: str | Path, task: str = "mqar") -> Path | None:
    """Accuracy vs state size, one panel per prompt form, one line per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if r["config"]["task"] == task]
    if not rows:
        return None
    variants = list(rows[0]["accuracy"]["default"])
    fig, axes = plt.subplots(len(variants), 3, figsize=(13, 3.6 * len(variants)), squeeze=False, sharey=True)
    for vi, variant in enumerate(variants):
        for fi, form in enumerate(FORMS):
            ax = axes[vi][fi]
            for family in sorted({r["family"] for r in rows}, key=lambda f: FAMILY_ORDER.get(f, 9)):
                pts = sorted(
                    (r["state_floats"], r["accuracy"][form][variant] * 100)
                    for r in rows
                    if r["family"] == family
                )
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", label=family)
            options = rows[0]["config"]["task_options"]
            if task == "mqar" and "num_values" in options:
                ax.axhline(100 / options["num_values"], color="gray", ls="--", lw=1, label="chance")
            ax.set_xscale("log")
            # ticks at the measured state sizes: a log axis over less than a decade has no
            # labelled major tick, and its minor labels overlap
            sizes = sorted({r["state_floats"] for r in rows})
            ax.set_xticks(sizes, [f"{x:,}" for x in sizes], rotation=30, fontsize=8)
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set_title(f"{task} {variant + ' ' if variant != 'all' else ''}— {form}")
            ax.set_xlabel("state (floats per sequence; attention: KV cache)")
            ax.grid(alpha=0.3)
            if fi == 0:
                ax.set_ylabel("accuracy (%)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
