#!/usr/bin/env python
"""The SSD's carry over chunks, timed in its launch variants on a CUDA GPU: the separate carry
pass at several settings (state elements and warps a program) against the walk that fuses the
chunk states into it (``SSDConfig.fused_states``). Median ms of 30 calls (CUDA events) of the
whole chunked scan with the final state, Mamba-2-1.3B's mixer shapes, bf16, inputs as views of
one projection; the relative difference of every variant's output to the first one's.

    python scripts/bench_ssd_carry.py [best.json]    # optionally write the fastest setting
"""

import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jrt_prompt.bench.timing import time_ms  # noqa: E402
from jrt_prompt.kernels.ssd import triton as tssd  # noqa: E402

SHAPES = ((1, 4096), (1, 8192), (8, 2048))  # (batch, sequence)


def _inputs(b, l, h=64, p=64, g=1, n=128, dtype=torch.bfloat16):
    proj = torch.randn(b, l, h * p + 2 * g * n + h, device="cuda", dtype=dtype)
    x = proj[..., : h * p].view(b, l, h, p)
    B = proj[..., h * p : h * p + g * n].view(b, l, g, n)
    C = proj[..., h * p + g * n : h * p + 2 * g * n].view(b, l, g, n)
    dt = proj[..., h * p + 2 * g * n :]
    A = -torch.rand(h, device="cuda") - 0.5
    return x, dt, A, B, C


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    base = dataclasses.replace(tssd.DEFAULT_CONFIG, fused_states=False)
    configs = {"separate pass 1024/4w": base}
    for block in (1024, 512, 256, 128):
        for warps in (1, 2, 4):
            configs[f"separate pass {block}/{warps}w"] = dataclasses.replace(
                base, block_pass=block, pass_warps=warps
            )
    configs["fused"] = dataclasses.replace(base, fused_states=True)
    D = torch.randn(64, device="cuda")
    bias = torch.randn(64, device="cuda")
    totals = dict.fromkeys(configs, 0.0)
    for b, l in SHAPES:
        inputs = _inputs(b, l)
        first = None
        for name, cfg in configs.items():

            def call(cfg=cfg, inputs=inputs):
                return tssd.ssd_chunk_scan(
                    *inputs, 256, D=D, dt_bias=bias, dt_softplus=True, return_final_states=True, config=cfg
                )

            y, _ = call()
            first = y.float() if first is None else first
            err = ((y.float() - first).norm() / first.norm()).item()
            ms = time_ms(call, warmup=5, reps=30)["median"]
            totals[name] += ms
            print(f"b{b} l{l} {name:<24} {ms:7.3f} ms  err {err:.1e}", flush=True)
    best = min(totals, key=totals.get)
    print(f"fastest over the shapes: {best} ({totals[best]:.2f} ms in all)")
    if len(sys.argv) > 1:
        cfg = configs[best]
        Path(sys.argv[1]).write_text(
            json.dumps(
                {"block_pass": cfg.block_pass, "pass_warps": cfg.pass_warps, "fused_states": cfg.fused_states}
            )
        )


if __name__ == "__main__":
    main()
