#!/usr/bin/env python
"""Mamba-2 SSD timings on a CUDA GPU: median ms per call of the chunked scan (prefill) and the step.

Columns: transformers' PyTorch path (``mamba2_chunk_scan`` / ``mamba2_selective_state_update``
without mamba-ssm), this project's PyTorch reference, its Triton kernels, and fla's
``chunk_simple_gla`` (when fla is installed). Shapes default to Mamba-2-1.3B's mixer (h=64, p=64,
n=128, g=1, chunk 256), bf16. Inputs are views of one projection, as transformers passes them.

    python scripts/bench_ssd.py                      # b in {1, 8}, l in {2048, 8192}
    python scripts/bench_ssd.py --tune --json ssd.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jrt_prompt.kernels.ssd import reference  # noqa: E402
from jrt_prompt.kernels.ssd import triton as tssd  # noqa: E402


def time_ms(fn, budget_ms: float = 2000.0, max_reps: int = 50) -> float:
    """Median ms per call (CUDA events); slow functions get fewer repetitions (at least 3)."""
    fn()  # warm-up (compilation, caches)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    first = start.elapsed_time(end)
    reps = int(max(3, min(max_reps, budget_ms / max(first, 1e-3))))
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def scan_inputs(b, l, h, p, g, n, dtype, seed=0, device="cuda"):
    gen = torch.Generator(device=device).manual_seed(seed)
    width = h * p + 2 * g * n + h
    proj = torch.randn(b, l, width, device=device, generator=gen).to(dtype)
    x, B, C, dt = proj.split([h * p, g * n, g * n, h], dim=-1)
    A = -torch.exp(torch.randn(h, device=device, generator=gen) * 0.5)
    D = torch.randn(h, device=device, generator=gen)
    dt_bias = torch.randn(h, device=device, generator=gen) * 0.5 - 2.0
    return dict(
        x=x.view(b, l, h, p), dt=dt, A=A, B=B.view(b, l, g, n), C=C.view(b, l, g, n), D=D, dt_bias=dt_bias
    )


def _fla():
    try:
        from jrt_prompt.kernels.ssd import fla as fla_ssd

        fla_ssd._chunk_simple_gla()
        return fla_ssd
    except Exception as exc:  # fla is optional
        print(f"fla: not available ({exc})")
        return None


def bench_scan(args, config) -> list[dict]:
    from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan

    fla_ssd = _fla()
    dtype = getattr(torch, args.dtype)
    rows = []
    for b, l in itertools.product(args.batches, args.lengths):
        t = scan_inputs(b, l, args.heads, args.head_dim, args.groups, args.state, dtype)
        pos = (t["x"], t["dt"], t["A"], t["B"], t["C"], args.chunk)
        kw = dict(D=t["D"], dt_bias=t["dt_bias"], dt_softplus=True, return_final_states=True)
        row = {"batch": b, "seq": l}
        candidates = {
            "transformers": partial(mamba2_chunk_scan, *pos, **kw),
            "reference": partial(reference.ssd_chunk_scan, *pos, **kw),
            "triton": partial(tssd.ssd_chunk_scan, *pos, config=config, **kw),
        }
        if fla_ssd is not None:
            candidates["fla"] = partial(fla_ssd.ssd_chunk_scan, *pos, **kw)
        for name, fn in candidates.items():
            if name in args.skip:
                continue
            try:
                row[name] = time_ms(fn, budget_ms=args.budget_ms)
            except torch.cuda.OutOfMemoryError:
                row[name] = None
                torch.cuda.empty_cache()
        rows.append(row)
        del t
        torch.cuda.empty_cache()
    return rows


def bench_step(args) -> list[dict]:
    from transformers.models.mamba2.modeling_mamba2 import mamba2_selective_state_update

    dtype = getattr(torch, args.dtype)
    h, p, n, g = args.heads, args.head_dim, args.state, args.groups
    rows = []
    for b in args.batches:
        t = scan_inputs(b, 1, h, p, g, n, dtype)
        state = torch.randn(b, h, p, n, device=t["x"].device)
        pos = (
            state, t["x"][:, 0], t["dt"].transpose(1, 2).expand(-1, -1, p), t["A"][:, None, None].expand(-1, p, n),
            t["B"][:, 0], t["C"][:, 0], t["D"][:, None].expand(-1, p),
        )
        kw = dict(z=None, dt_bias=t["dt_bias"][:, None].expand(-1, p), dt_softplus=True)
        row = {"batch": b}
        for name, fn in {
            "transformers": partial(mamba2_selective_state_update, *pos, **kw),
            "reference": partial(reference.ssd_state_update, *pos, **kw),
            "triton": partial(tssd.ssd_state_update, *pos, **kw),
        }.items():
            row[name] = time_ms(fn, budget_ms=200.0, max_reps=200)
        rows.append(row)
    return rows


def tune(args) -> list[dict]:
    """Time the Triton scan over launch parameters at the first batch and the last length: first the
    chunk, tiles, warps and where C B^T is computed; then, from the best, the state kernels' form."""
    dtype = getattr(torch, args.dtype)
    b, l = args.batches[0], args.lengths[-1]
    t = scan_inputs(b, l, args.heads, args.head_dim, args.groups, args.state, dtype)
    pos = (t["x"], t["dt"], t["A"], t["B"], t["C"], args.chunk)
    kw = dict(D=t["D"], dt_bias=t["dt_bias"], dt_softplus=True, return_final_states=True)
    results = []

    def run(cfg):
        try:
            ms = time_ms(partial(tssd.ssd_chunk_scan, *pos, config=cfg, **kw), budget_ms=300.0)
        except Exception as exc:  # e.g. out of shared memory for a large tile
            print(f"  {cfg}: failed ({type(exc).__name__})")
            return
        results.append({"config": dataclasses.asdict(cfg), "ms": ms})

    for chunk, bm, bk, warps, pre in itertools.product((64, 128, 256), (64, 128), (32, 64), (4, 8), (True, False)):
        if bm <= chunk and bk <= chunk:
            run(tssd.SSDConfig(chunk=chunk, block_m=bm, block_k=bk, num_warps=warps, precompute_cb=pre))
    best = tssd.SSDConfig(**min(results, key=lambda r: r["ms"])["config"])
    for fused, bn in itertools.product((False, True), (32, 64, 128)):
        cfg = dataclasses.replace(best, fused_states=fused, block_n=bn)
        if cfg != best:
            run(cfg)
    results.sort(key=lambda r: r["ms"])
    print(f"tuning at batch {b}, seq {l}: fastest 5 of {len(results)}")
    for r in results[:5]:
        print(f"  {r['ms']:.3f} ms  {r['config']}")
    return results


def _table(rows, keys, cols) -> str:
    head = " | ".join(keys + [f"{c} ms" for c in cols])
    lines = [head, " | ".join("---" for _ in keys + cols)]
    for r in rows:
        cells = [str(r[k]) for k in keys]
        cells += ["—" if r.get(c) is None else f"{r[c]:.3f}" for c in cols]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(v) for v in s.split(",")]
    ap.add_argument("--batches", type=ints, default=[1, 8])
    ap.add_argument("--lengths", type=ints, default=[2048, 8192])
    ap.add_argument("--heads", type=int, default=64)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--state", type=int, default=128)
    ap.add_argument("--groups", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=256, help="the model's chunk_size (the Triton kernels take it too)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--budget-ms", type=float, default=2000.0, help="time spent per measurement (min 3 calls)")
    ap.add_argument("--skip", default="", help="comma-separated columns to leave out, e.g. transformers")
    ap.add_argument("--tune", action="store_true", help="first search Triton launch parameters; time with the best")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    args.skip = {s for s in args.skip.split(",") if s}
    if not torch.cuda.is_available():
        print("bench_ssd needs a CUDA GPU")
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "args": {
        k: sorted(v) if isinstance(v, set) else v for k, v in vars(args).items() if k != "json"}}
    try:
        import transformers
        import triton

        result["transformers"], result["triton"] = transformers.__version__, triton.__version__
    except ImportError:
        pass
    config = tssd.DEFAULT_CONFIG
    if args.tune:
        result["tuning"] = tune(args)
        if result["tuning"]:
            config = tssd.SSDConfig(**result["tuning"][0]["config"])
    result["triton_config"] = dataclasses.asdict(config)
    result["scan"] = bench_scan(args, config)
    result["step"] = bench_step(args)
    print(f"{result['device']}, {args.dtype}, h={args.heads} p={args.head_dim} n={args.state} g={args.groups}, "
          f"chunk {args.chunk}; Triton config {config}")
    print("chunked scan (prefill), median ms per call:")
    print(_table(result["scan"], ["batch", "seq"], ["transformers", "reference", "triton", "fla"]))
    print("one-token step, median ms per call:")
    print(_table(result["step"], ["batch"], ["transformers", "reference", "triton"]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
