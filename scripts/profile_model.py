#!/usr/bin/env python
"""Where a whole-model prefill spends its time: torch.profiler's CUDA kernel table for one model.

    python scripts/profile_model.py mamba-1.4b --tokens 4096 --batch 1
    python scripts/profile_model.py mamba2-1.3b --tokens 4096 --engine   # the decode engine's prefill
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from jrt_prompt.bench.model import MODELS, build_model  # noqa: E402
from jrt_prompt.generation import family_of  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=MODELS)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--engine", action="store_true", help="profile the decode engine's prefill, not the forward")
    args = parser.parse_args()
    model = build_model(args.model, device="cuda", dtype=torch.bfloat16)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.tokens), device="cuda")
    family = family_of(model) if args.engine else None

    def prefill():
        if family is not None:
            return family.prefill(model, ids, None)
        return model(input_ids=ids, use_cache=True, logits_to_keep=1)

    with torch.inference_mode():
        for _ in range(2):
            prefill()
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        prefill()
        end.record()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            prefill()
            torch.cuda.synchronize()
    path = f"engine prefill ({family.name})" if family is not None else "model forward"
    print(f"{args.model} batch {args.batch} x {args.tokens} tokens, {path}: {start.elapsed_time(end):.1f} ms unprofiled")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
