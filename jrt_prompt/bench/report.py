"""Tables (markdown) and plots of benchmark results."""

from __future__ import annotations

from pathlib import Path

LABELS = {
    "fa2": "SDPA flash (FA2), causal",
    "cudnn": "cuDNN attention, causal",
    "fla_fused_chunk_based": "fla fused_chunk_based",
    "based": "Based (this project), N",
    "based_2n": "Based (this project), 2N",
    "pla": "PLA / JRT-RNN (this project), encoder = prompt",
    "pla_e1024": "PLA / JRT-RNN (this project), encoder = 1024",
}


def _fmt_ms(ms):
    return "—" if ms is None else (f"{ms:.2f}" if ms < 100 else f"{ms:.1f}")


def format_prefill_table(result: dict) -> str:
    """Markdown table: one row per N, ms (speed-up over FA2 at N) per method."""
    rows = result["rows"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = [
        "| N | " + " | ".join(LABELS.get(m, m) for m in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for n in dict.fromkeys(r["n"] for r in rows):
        cells = []
        for m in methods:
            r = next((x for x in rows if x["n"] == n and x["method"] == m), None)
            if r is None or r["ms"] is None:
                cells.append("—" if r is None else f"— ({r.get('note', '')})")
            elif m == "fa2":
                cells.append(f"{_fmt_ms(r['ms'])} ms")
            else:
                cells.append(f"{_fmt_ms(r['ms'])} ms ({r['speedup_vs_fa2']:.1f}×)")
        lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_decode_table(result: dict) -> str:
    rows = result["rows"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = [
        "| batch | " + " | ".join(f"{m} µs/step (tokens/s)" for m in methods) + " | fused vs SDPA |",
        "|---|" + "---|" * (len(methods) + 1),
    ]
    for b in dict.fromkeys(r["batch"] for r in rows):
        cells = []
        for m in methods:
            r = next(x for x in rows if x["batch"] == b and x["method"] == m)
            cells.append(f"{r['us_graph']:.1f} ({r['tokens_per_s']:,.0f})")
        fused = next(x for x in rows if x["batch"] == b and x["method"] == "linear_step_fused")
        lines.append(f"| {b} | " + " | ".join(cells) + f" | {fused['speedup_vs_sdpa']:.1f}× |")
    return "\n".join(lines)


def plot_prefill(result: dict, path: str | Path) -> Path:
    """Log-log plot of ms against N for every method (matplotlib, written to ``path``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in dict.fromkeys(r["method"] for r in rows):
        pts = [(r["n"], r["ms"]) for r in rows if r["method"] == m and r["ms"] is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=LABELS.get(m, m))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("prompt tokens N")
    ax.set_ylabel("prefill time (ms)")
    shape = result["shape"]
    ax.set_title(
        f"batch {shape['batch']}, {shape['heads']} heads, head dim {shape['head_dim']}, {shape['dtype']}"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
