#!/usr/bin/env python
"""Whole-model benchmark (same job as `jrt bench model`), runnable from a checkout without installing."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jrt_prompt.bench.model import MODELS, format_model_table, run_model_bench  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--lengths", default="2048,8192,32768")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--max-prefill-s", type=float, default=20.0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    result = run_model_bench(
        [int(x) for x in args.lengths.split(",")],
        models=args.models.split(","),
        batch=args.batch,
        decode_tokens=args.decode_tokens,
        max_prefill_s=args.max_prefill_s,
        log=lambda s: print(s, flush=True),
    )
    print(format_model_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
