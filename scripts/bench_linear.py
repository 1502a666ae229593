#!/usr/bin/env python
"""The one-row linear (``jrt_prompt.kernels.linear``) against ``F.linear`` (cuBLAS) on the
benchmark models' projections, bf16, on a CUDA GPU, as a batch-1 decode step meets them.

For every distinct (out, in) weight shape of the models' linear layers: µs per call of cuBLAS and
of the kernel with its default tiles (``pick_config``), replayed from a CUDA graph (no launch
gaps), and the GB/s each reaches streaming the weight. Each call of a replay reads another copy
of the weight (at least 512 MB of copies in all), so the weight comes from memory, not from L2,
as in a decode step that reads every weight of a model once. ``--sweep`` also times a grid of
tiles and prints the fastest per shape: the data behind ``pick_config``.

    python scripts/bench_linear.py [--models mamba-1.4b,...] [--sweep] [--json out.json]
"""

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jrt_prompt.bench.model import build_config  # noqa: E402
from jrt_prompt.bench.timing import time_graph_ms  # noqa: E402
from jrt_prompt.kernels.linear import triton as kernels  # noqa: E402

MODELS = "mamba-1.4b,mamba2-1.3b,jrt-rnn-1.3b,based-1.3b"
COPY_BYTES = 512 << 20
STEPS = 24  # calls per captured graph


def weight_shapes(name: str) -> list[tuple[int, int]]:
    """Distinct (out, in) shapes of a model's linear layers, built on the meta device."""
    from transformers import AutoModelForCausalLM

    config = build_config(name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sorted({tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear)})


def sweep_configs():
    for block_n, block_k, warps, stages in itertools.product((2, 4, 8, 16), (512, 1024, 2048), (4, 8), (3, 4, 6)):
        if block_n * block_k <= 16384:
            yield dict(BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages)


def cold_calls(fn, weights):
    """A callable whose successive calls (as captured in one graph) read successive weight copies."""
    counter = itertools.count()
    return lambda: fn(weights[next(counter) % len(weights)])


def measure(n: int, k: int, sweep: bool) -> dict:
    """One weight shape: cuBLAS and the kernel (default tiles; with ``sweep`` the fastest tiles)."""
    copies = max(2, min(STEPS, -(-COPY_BYTES // (n * k * 2))))
    weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5 for _ in range(copies)]
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    expect = F.linear(x, weights[0]).float()
    err = ((kernels.row_linear(x, weights[0], None).float() - expect).norm() / expect.norm()).item()

    def us(fn, reps=10):
        return time_graph_ms(cold_calls(fn, weights), steps=STEPS, reps=reps)["median"] * 1e3

    row = dict(out=n, inp=k, rel_err=err, config=kernels.pick_config(k))
    row["cublas_us"] = us(lambda w: F.linear(x, w))
    row["kernel_us"] = us(lambda w: kernels.row_linear(x, w, None))
    if sweep:
        best = None
        for config in sweep_configs():
            try:
                t = us(lambda w, c=config: kernels.row_linear(x, w, None, c), reps=5)
            except Exception:  # a tile that does not fit (shared memory, registers)
                continue
            if best is None or t < best[0]:
                best = (t, config)
        row["best_us"], row["best_config"] = best
    return row


def row_line(row: dict) -> str:
    n, k = row["out"], row["inp"]

    def gbs(us):
        return n * k * 2 / (us * 1e-6) / 1e9

    cublas, ours = row["cublas_us"], row["kernel_us"]
    line = (f"{n:6d} x {k:5d}  cuBLAS {cublas:7.1f} us ({gbs(cublas):5.0f} GB/s)"
            f"  kernel {ours:7.1f} us ({gbs(ours):5.0f} GB/s)  {cublas / ours:4.2f}x  err {row['rel_err']:.1e}")
    if "best_us" in row:
        line += f"  best {row['best_us']:7.1f} us ({gbs(row['best_us']):5.0f} GB/s) {row['best_config']}"
    return line


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    shapes = sorted({s for name in args.models.split(",") for s in weight_shapes(name)})
    out = []
    for n, k in shapes:
        out.append(measure(n, k, args.sweep))
        print(row_line(out[-1]), flush=True)
        torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": out}, indent=1))


if __name__ == "__main__":
    main()
