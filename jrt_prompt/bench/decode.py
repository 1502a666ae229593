"""Decode benchmark: one recurrent step (fused Triton kernel) vs SDPA over a KV cache.

Per step and per attention layer: softmax attention reads the whole cache (2 x L x D per head),
the linear-attention step reads and writes its fixed-size state (F x D fp32 per head, F = 273).
Both are timed eagerly (CUDA events around each call) and as CUDA-graph replays, which is how a
decoder would run them and which removes the CPU launch cost from the comparison.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence

import torch

from .prefill import _dtype
from .timing import environment, require_cuda, time_graph_ms, time_ms


def _sdpa_decode(b, h, d, cache_len, dtype, device):
    q = torch.randn(b, h, 1, d, device=device, dtype=dtype)
    k_cache, v_cache = (torch.randn(b, h, cache_len, d, device=device, dtype=dtype) for _ in range(2))
    return lambda: torch.nn.functional.scaled_dot_product_attention(q, k_cache, v_cache)


def _linear_step(b, h, d, f, dtype, device, fused: bool, step_config=None):
    from jrt_prompt.kernels.taylor import reference
    from jrt_prompt.kernels.taylor.triton_step import decode_step

    state = reference.empty_state(b, h, f, d, device)
    state.kv.normal_()
    state.ksum.uniform_(1.0, 2.0)
    q, k = (torch.randn(b, h, f, device=device, dtype=dtype) * 0.1 for _ in range(2))
    v = torch.randn(b, h, d, device=device, dtype=dtype)
    if fused:
        return lambda: decode_step(q, k, v, state, config=step_config)
    return lambda: reference.step_reference(q, k, v, state)


def run_decode_bench(
    batches: Sequence[int] = (1, 4, 16, 64),
    *,
    cache_len: int = 32768,
    heads: int = 16,
    head_dim: int = 64,
    feature_dim: int = 16,
    dtype: str = "bfloat16",
    reps: int = 20,
    step_config=None,
    log: Callable[[str], None] = print,
) -> dict:
    """Microseconds per decode step and tokens/s (one layer) for each batch size."""
    device = require_cuda()
    torch_dtype = _dtype(dtype)
    rows = []
    for b in batches:
        cases = {
            "sdpa_kv_cache": lambda b=b: _sdpa_decode(b, heads, head_dim, cache_len, torch_dtype, device),
            "linear_step_fused": lambda b=b: _linear_step(
                b, heads, head_dim, feature_dim, torch_dtype, device, True, step_config
            ),
            "linear_step_pytorch": lambda b=b: _linear_step(
                b, heads, head_dim, feature_dim, torch_dtype, device, False
            ),
        }
        for name, make in cases.items():
            fn = make()
            eager = time_ms(fn, warmup=5, reps=reps)
            graph = time_graph_ms(fn, steps=20, warmup=3, reps=max(5, reps // 2))
            us = graph["median"] * 1e3
            rows.append(
                {
                    "batch": b,
                    "method": name,
                    "cache_len": cache_len if name == "sdpa_kv_cache" else None,
                    "us_graph": us,
                    "us_eager": eager["median"] * 1e3,
                    "tokens_per_s": b / (us * 1e-6),
                }
            )
            log(f"batch={b:>3} {name:<22} graph {us:9.1f} us   eager {eager['median'] * 1e3:9.1f} us")
            fn = None
            gc.collect()
            torch.cuda.empty_cache()
        sdpa = next(r for r in rows if r["batch"] == b and r["method"] == "sdpa_kv_cache")["us_graph"]
        for r in rows:
            if r["batch"] == b:
                r["speedup_vs_sdpa"] = sdpa / r["us_graph"]
    return {
        "env": environment(),
        "shape": {
            "heads": heads,
            "head_dim": head_dim,
            "feature_dim": feature_dim,
            "dtype": dtype,
            "cache_len": cache_len,
        },
        "timing": {
            "statistic": "median per step; CUDA-graph replay of 20 steps (graph) and single calls (eager)"
        },
        "rows": rows,
    }


def tune_step(
    batch: int = 64, *, heads: int = 16, head_dim: int = 64, dtype: str = "bfloat16", log=print
) -> list[dict]:
    """Graph-replay microseconds of the fused step under several launch configs; fastest first."""
    from jrt_prompt.kernels.taylor.config import StepConfig

    device = require_cuda()
    out = []
    for block_r in (16, 32, 64):
        for warps in (1, 2, 4, 8):
            cfg = StepConfig(block_r=block_r, num_warps=warps)
            fn = _linear_step(batch, heads, head_dim, 16, _dtype(dtype), device, True, cfg)
            us = time_graph_ms(fn, steps=20, warmup=3, reps=10)["median"] * 1e3
            out.append({"config": vars(cfg), "us": us})
            log(f"step tune {vars(cfg)} -> {us:.1f} us")
    out.sort(key=lambda r: r["us"])
    return out
