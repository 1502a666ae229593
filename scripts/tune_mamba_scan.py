#!/usr/bin/env python
"""Time the selective-scan kernel's launch shapes at Mamba-1.4B's sizes; print a table, fastest first.

    python scripts/tune_mamba_scan.py            # on a CUDA GPU
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import triton  # noqa: E402

from jrt_prompt.kernels.mamba import triton as kernels  # noqa: E402


def inputs(batch, d, length, n, rank=128):
    g = torch.Generator(device="cuda").manual_seed(0)
    xz = torch.randn(batch, length, 2 * d, device="cuda", generator=g, dtype=torch.bfloat16)
    dt = torch.randn(batch, d, length, device="cuda", generator=g, dtype=torch.bfloat16) * 0.5
    proj = torch.randn(batch, length, rank + 2 * n, device="cuda", generator=g, dtype=torch.bfloat16)
    A = -torch.rand(d, n, device="cuda", generator=g) - 0.1
    return dict(
        x=xz[..., :d].transpose(1, 2), z=xz[..., d:].transpose(1, 2), dt=dt, A=A,
        B=proj[..., rank : rank + n].transpose(1, 2), C=proj[..., rank + n :].transpose(1, 2),
        D=torch.randn(d, device="cuda"), delta_bias=torch.randn(d, device="cuda") * 0.1,
    )


def main() -> None:
    shapes = [(1, 4096, 4096), (1, 4096, 16384), (8, 4096, 2048)]
    grid = list(itertools.product([16, 32, 64], [1, 2, 4], [True, False], [8, 16]))
    results = []
    for batch, d, length in shapes:
        t = inputs(batch, d, length, 16)
        ref = None
        for block_d, warps, prefetch, per_sm in grid:
            cfg = kernels.ScanConfig(block_d=block_d, num_warps=warps, prefetch=prefetch, programs_per_sm=per_sm)

            def call(cfg=cfg, t=t):
                return kernels.selective_scan(**t, delta_softplus=True, return_last_state=True, config=cfg)

            try:
                y, _ = call()
                if ref is None:
                    ref = y.float()
                err = ((y.float() - ref).norm() / ref.norm()).item()
                ms = triton.testing.do_bench(call, warmup=5, rep=40, return_mode="median")
            except Exception as exc:  # a shape that does not compile is a row, not a crash
                print(f"{batch}x{length} {cfg}: {type(exc).__name__}: {str(exc)[:120]}")
                continue
            results.append((batch, length, ms, err, cfg))
    for batch, length in sorted({(b, l) for b, l, *_ in results}):
        rows = sorted((r for r in results if r[0] == batch and r[1] == length), key=lambda r: r[2])
        print(f"\nbatch {batch} x {length} tokens, d=4096, n=16 (median ms; rel. diff to first config)")
        for _, _, ms, err, cfg in rows[:8]:
            print(f"  {ms:8.3f} ms  {err:.1e}  {cfg}")
        default = [r for r in rows if r[4] == kernels.DEFAULT_SCAN_CONFIG]
        if default:
            print(f"  default {default[0][2]:.3f} ms")


if __name__ == "__main__":
    main()
