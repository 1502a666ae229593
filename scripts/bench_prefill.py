#!/usr/bin/env python
"""Prefill benchmark (same job as `jrt bench prefill`), runnable from a checkout without installing.

python scripts/bench_prefill.py --json prefill.json --plot prefill.png [--tune]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jrt_prompt.bench import format_prefill_table, plot_prefill, run_prefill_bench  # noqa: E402
from jrt_prompt.bench.prefill import METHODS, tune_prefill  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="2048,8192,32768,65536")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--feature-dim", type=int, default=16)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument(
        "--enc-fraction", type=float, default=1.0, help="share of the prompt that is PLA's encoder"
    )
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--tune", action="store_true", help="first pick the fastest kernel launch config at 32k")
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path)
    p.add_argument("--profile", action="store_true", help="also print GPU time per kernel at 32k")
    p.add_argument("--tune-only", action="store_true", help="only tune (implies --tune) and write the tuning")
    args = p.parse_args(argv)
    config = encoder_config = tuning = None
    if args.tune or args.tune_only:
        config, encoder_config, tuning = tune_prefill(
            32768, batch=args.batch, heads=args.heads, head_dim=args.head_dim, dtype=args.dtype
        )
        for row in tuning:
            print(
                f"{row['op']:8s} {row['ms'] if row['ms'] is not None else row.get('note')}  {row['config']}"
            )
        print(f"fastest config: {config}; encoder pass: {encoder_config}")
        if args.tune_only:
            if args.json:
                args.json.write_text(json.dumps({"tuning": tuning}, indent=2))
            return 0
    result = run_prefill_bench(
        [int(x) for x in args.lengths.split(",")],
        batch=args.batch,
        heads=args.heads,
        head_dim=args.head_dim,
        feature_dim=args.feature_dim,
        dtype=args.dtype,
        enc_fraction=args.enc_fraction,
        methods=args.methods.split(","),
        reps=args.reps,
        config=config,
        encoder_config=encoder_config,
    )
    if tuning is not None:
        result["tuning"] = tuning
    if args.profile:
        from jrt_prompt.bench.prefill import profile_prefill

        result["profile_32k"] = profile_prefill(
            32768,
            batch=args.batch,
            heads=args.heads,
            head_dim=args.head_dim,
            dtype=args.dtype,
            config=config,
            encoder_config=encoder_config,
        )
        for name, kernels in result["profile_32k"].items():
            for row in kernels[:6]:
                print(f"profile {name:<6} {row['ms']:9.3f} ms  x{row['calls']}  {row['kernel']}")
    print(json.dumps(result["env"]))
    print(format_prefill_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.plot:
        plot_prefill(result, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
