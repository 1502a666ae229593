#!/usr/bin/env python
"""Run the Based prefill kernel a few times at one shape (a target for a profiler such as ncu)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from jrt_prompt.kernels.based.triton_prefill import based_prefill  # noqa: E402
from jrt_prompt.kernels.taylor.config import ChunkConfig  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--config", default="{}", help='ChunkConfig fields as JSON, e.g. {"chunk": 64}')
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    cfg = ChunkConfig(**json.loads(args.config))
    q, k = (
        torch.randn(args.batch, args.n, args.heads, 16, device="cuda", dtype=torch.bfloat16) for _ in range(2)
    )
    v = torch.randn(args.batch, args.n, args.heads, 64, device="cuda", dtype=torch.bfloat16)
    for _ in range(args.runs):
        based_prefill(q, k, v, config=cfg)
    torch.cuda.synchronize()
    print("done", cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
