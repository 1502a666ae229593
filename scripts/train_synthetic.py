"""Train the synthetic recall sweep (MQAR, set disjointness, kv-docs) and write the results.

    python scripts/train_synthetic.py --plan full --out runs/synth --device cuda --workers 20 --time-budget 330

Every job trains one small model from scratch for ``--time-budget`` seconds (or its step limit),
evaluates it on held-out data in the three prompt forms and saves its checkpoint. At the end:
``results.json`` (all results), ``table.md`` and ``mqar.png`` / ``sd.png`` / ``kv-docs.png``, and,
with ``--pack``, the checkpoints packed into tar files of at most ``--pack-mb`` MB each.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jrt_prompt.synthetic.report import markdown_table, plot_accuracy_vs_state  # noqa: E402
from jrt_prompt.synthetic.sweep import plan, run_sweep  # noqa: E402


def pack(out: Path, limit_mb: float) -> list[Path]:
    """Checkpoint folders into tars of at most ``limit_mb`` each (a folder is never split)."""
    folders = sorted(p for p in (out / "ckpt").iterdir() if p.is_dir())
    groups, current, size = [], [], 0
    for folder in folders:
        n = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        if current and size + n > limit_mb * 1e6:
            groups.append(current)
            current, size = [], 0
        current.append(folder)
        size += n
    if current:
        groups.append(current)
    tars = []
    for i, group in enumerate(groups):
        path = out / f"ckpt_{i}.tar"
        with tarfile.open(path, "w") as tar:
            for folder in group:
                tar.add(folder, arcname=folder.name)
        tars.append(path)
    return tars


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", default="full")
    ap.add_argument("--only", nargs="*", help="run only jobs whose name starts with one of these")
    ap.add_argument("--out", default="runs/synth")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--time-budget", type=float, default=300.0)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument(
        "--job-timeout", type=float, default=None, help="kill a job still running after this many seconds"
    )
    ap.add_argument("--pack", action="store_true")
    ap.add_argument("--pack-mb", type=float, default=15.0)
    args = ap.parse_args()

    jobs = plan(args.plan, args.time_budget)
    if args.only:
        jobs = {k: v for k, v in jobs.items() if any(k.startswith(p) for p in args.only)}
    if args.max_steps:
        for config in jobs.values():
            config.max_steps = args.max_steps
    out = Path(args.out)
    start = time.time()
    print(f"{len(jobs)} jobs: {', '.join(jobs)}", flush=True)
    results = run_sweep(jobs, out, device=args.device, workers=args.workers, job_timeout_s=args.job_timeout)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    table = markdown_table(results)
    (out / "table.md").write_text(table + "\n")
    for task in ("mqar", "sd", "kv-docs"):
        plot_accuracy_vs_state(results, out / f"{task}.png", task)
    if args.pack:
        pack(out, args.pack_mb)
    print(table)
    print(f"{len(results)}/{len(jobs)} jobs finished in {time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
