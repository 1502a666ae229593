#!/usr/bin/env python
"""Decode benchmark (same job as `jrt bench decode`), runnable from a checkout without installing."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jrt_prompt.bench import format_decode_table, run_decode_bench  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batches", default="1,4,16,64")
    p.add_argument("--cache-len", type=int, default=32768)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--json", type=Path)
    p.add_argument(
        "--tune", action="store_true", help="first pick the fastest step launch config at batch 64"
    )
    args = p.parse_args(argv)
    step_config = None
    tuning = None
    if args.tune:
        from jrt_prompt.bench.decode import tune_step
        from jrt_prompt.kernels.taylor.config import StepConfig

        tuning = tune_step(64, heads=args.heads, head_dim=args.head_dim, dtype=args.dtype)
        step_config = StepConfig(**tuning[0]["config"])
        print(f"fastest step config: {step_config}")
    result = run_decode_bench(
        [int(x) for x in args.batches.split(",")],
        cache_len=args.cache_len,
        heads=args.heads,
        head_dim=args.head_dim,
        dtype=args.dtype,
        step_config=step_config,
    )
    if tuning is not None:
        result["tuning"] = tuning
    print(format_decode_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
