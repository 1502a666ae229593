"""Prefill benchmark: this project's Based / PLA kernels against FlashAttention-2, cuDNN and fla.

All methods run side by side in one process on the same GPU, on the same shapes: batch B,
H heads, N tokens; softmax attention with head dim D; linear attention with feature dim f for
q/k and D for v. "based@2N" is JRT-Prompt's cost (the prompt read twice), compared with FA2 on N.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable, Sequence

import torch

from jrt_prompt.errors import JRTError

from .timing import environment, require_cuda, time_ms

METHODS = ("fa2", "cudnn", "fla_fused_chunk_based", "based", "based_2n", "pla", "pla_e1024")
_DTYPES = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def _dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise JRTError(f"--dtype {name!r} is not supported; use bfloat16 or float16")
    return _DTYPES[name]


def _sdpa(backend_name: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"fa2": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend_name]

    def make(b, n, h, d, f, dtype, device, enc_fraction, config, encoder_config=None):
        q, k, v = (torch.randn(b, n, h, d, device=device, dtype=dtype) for _ in range(3))
        # [b, n, h, d] viewed as [b, h, n, d]: the layout a model produces, no copies.
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))

        def run():
            with sdpa_kernel([backend]):
                return torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True)

        return run

    return make


def _fla_based(b, n, h, d, f, dtype, device, enc_fraction, config, encoder_config=None):
    from fla.ops.based import fused_chunk_based

    q, k = (torch.randn(b, n, h, f, device=device, dtype=dtype) for _ in range(2))
    v = torch.randn(b, n, h, d, device=device, dtype=dtype)
    return lambda: fused_chunk_based(q, k, v)


def _based(length_factor: int):
    def make(b, n, h, d, f, dtype, device, enc_fraction, config, encoder_config=None):
        from jrt_prompt.kernels.based.triton_prefill import based_prefill

        m = n * length_factor
        q, k = (torch.randn(b, m, h, f, device=device, dtype=dtype) for _ in range(2))
        v = torch.randn(b, m, h, d, device=device, dtype=dtype)
        return lambda: based_prefill(q, k, v, config=config)

    return make


def _pla(fixed_encoder: int | None = None):
    """PLA with the encoder = enc_fraction of the prompt, or the first `fixed_encoder` tokens (the
    released JRT-RNN checkpoints read 1024)."""

    def make(b, n, h, d, f, dtype, device, enc_fraction, config, encoder_config=None):
        from jrt_prompt.kernels.pla.triton_prefill import pla_prefill

        q, k, ke = (torch.randn(b, n, h, f, device=device, dtype=dtype) for _ in range(3))
        v, ve = (torch.randn(b, n, h, d, device=device, dtype=dtype) for _ in range(2))
        e = min(n, fixed_encoder) if fixed_encoder else int(round(enc_fraction * n))
        enc = torch.full((b,), e, device=device, dtype=torch.long)
        return lambda: pla_prefill(
            q, k, v, ke, ve, enc_lengths=enc, config=config, encoder_config=encoder_config
        )

    return make


_MAKERS: dict[str, Callable] = {
    "fa2": _sdpa("fa2"),
    "cudnn": _sdpa("cudnn"),
    "fla_fused_chunk_based": _fla_based,
    "based": _based(1),
    "based_2n": _based(2),
    "pla": _pla(),
    "pla_e1024": _pla(1024),
}


def _free():
    gc.collect()
    torch.cuda.empty_cache()


def run_prefill_bench(
    lengths: Sequence[int] = (2048, 8192, 32768, 65536),
    *,
    batch: int = 16,
    heads: int = 16,
    head_dim: int = 64,
    feature_dim: int = 16,
    dtype: str = "bfloat16",
    enc_fraction: float = 1.0,
    methods: Sequence[str] = METHODS,
    warmup: int = 3,
    reps: int = 10,
    config=None,
    encoder_config=None,
    log: Callable[[str], None] = print,
) -> dict:
    """Time every method at every length; returns {"env", "shape", "rows"} (ms and speed-up over FA2 at N).

    ``config`` launches the Based kernel and PLA's causal pass (default ``DEFAULT_CONFIG``),
    ``encoder_config`` PLA's encoder reduction (default ``DEFAULT_ENCODER_CONFIG``)."""
    device = require_cuda()
    torch_dtype = _dtype(dtype)
    unknown = [m for m in methods if m not in _MAKERS]
    if unknown:
        raise JRTError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if not 0.0 <= enc_fraction <= 1.0:
        raise JRTError("--enc-fraction must be between 0 and 1 (share of the prompt read as the encoder)")
    from jrt_prompt.kernels.pla.triton_prefill import DEFAULT_ENCODER_CONFIG
    from jrt_prompt.kernels.taylor.config import DEFAULT_CONFIG

    config = config or DEFAULT_CONFIG
    encoder_config = encoder_config or DEFAULT_ENCODER_CONFIG
    rows = []
    for n in lengths:
        results = {}
        for method in methods:
            try:
                fn = _MAKERS[method](
                    batch,
                    n,
                    heads,
                    head_dim,
                    feature_dim,
                    torch_dtype,
                    device,
                    enc_fraction,
                    config,
                    encoder_config,
                )
                stats = time_ms(fn, warmup=warmup, reps=reps)
                results[method] = {"ms": stats["median"], "stats": stats}
            except ImportError as exc:
                results[method] = {"ms": None, "note": f"not installed: {exc.name}"}
            except torch.cuda.OutOfMemoryError:
                results[method] = {"ms": None, "note": "out of GPU memory"}
            except RuntimeError as exc:  # e.g. a backend that refuses this shape
                results[method] = {"ms": None, "note": str(exc).splitlines()[0][:200]}
            finally:
                fn = None
                _free()
            ms = results[method]["ms"]
            log(f"N={n:>6} {method:<24} " + (f"{ms:9.3f} ms" if ms is not None else results[method]["note"]))
        fa2 = results.get("fa2", {}).get("ms")
        for method, res in results.items():
            rows.append(
                {
                    "n": n,
                    "tokens_read": 2 * n if method == "based_2n" else n,
                    "method": method,
                    "ms": res["ms"],
                    "speedup_vs_fa2": (fa2 / res["ms"]) if (fa2 and res["ms"]) else None,
                    **({"note": res["note"]} if "note" in res else {}),
                }
            )
    return {
        "env": environment(),
        "shape": {
            "batch": batch,
            "heads": heads,
            "head_dim": head_dim,
            "feature_dim": feature_dim,
            "dtype": dtype,
            "enc_fraction": enc_fraction,
        },
        "kernel_config": vars(config) if hasattr(config, "__dict__") else str(config),
        "encoder_kernel_config": vars(encoder_config),
        "timing": {"warmup": warmup, "reps": reps, "statistic": "median of CUDA-event times"},
        "rows": rows,
    }


def _tuning_configs(op: str) -> list:
    from jrt_prompt.kernels.taylor.config import ChunkConfig

    def cfg(chunk, block_dv, warps, stages, pairs="cyclic"):
        return ChunkConfig(chunk=chunk, block_dv=block_dv, num_warps=warps, num_stages=stages, pairs=pairs)

    # (every shape here is also run by the GPU tests: a miscompiled shape would end the process)
    def inline(config, **kw):  # the normaliser carried through the kernel's walk (earlier form)
        return dataclasses.replace(config, normaliser_block=0, **kw)

    if op == "encoder":
        # the state-only pass: no queries, no [chunk, chunk] scores, so larger chunks may pay
        return [
            cfg(128, 64, 4, 3),
            cfg(128, 64, 4, 2),
            cfg(128, 64, 4, 4),
            cfg(128, 32, 4, 2),
            cfg(64, 64, 4, 2),
            cfg(128, 64, 8, 2),
            cfg(256, 64, 8, 2),
            inline(cfg(128, 64, 4, 2)),
            inline(cfg(128, 64, 4, 2), split_normaliser=False),
        ]
    # the pair features grouped by cyclic distance (ten [64, 16] state tiles, see
    # _chunked_cyclic_kernel) or in one [64, 128] tile by one-hot selection ("onehot"); the
    # normaliser in its own pass (blocks of 1024 tokens, 1 warp by default) or inline
    return [
        cfg(64, 64, 4, 3),
        cfg(64, 64, 4, 2),
        cfg(64, 64, 4, 4),
        dataclasses.replace(cfg(64, 64, 4, 3), normaliser_block=512),
        dataclasses.replace(cfg(64, 64, 4, 3), normaliser_block=2048),
        dataclasses.replace(cfg(64, 64, 4, 3), normaliser_warps=2),
        dataclasses.replace(cfg(64, 64, 4, 3), normaliser_warps=4),
        cfg(32, 64, 4, 2),
        cfg(64, 64, 8, 2),
        cfg(128, 64, 8, 2),
        cfg(64, 64, 4, 2, pairs="onehot"),
        inline(cfg(64, 64, 4, 2)),
        # the inline normaliser's products in fp32 on the CUDA cores
        inline(cfg(64, 64, 4, 2), split_normaliser=False),
    ]


def tune_chunked(
    n: int = 32768,
    *,
    batch: int = 16,
    heads: int = 16,
    head_dim: int = 64,
    dtype: str = "bfloat16",
    op: str = "based",
    configs=None,
    reps: int = 5,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Time a prefill kernel under several launch configurations; fastest first.

    op "based": the causal Based prefill (also PLA's causal pass); op "encoder": PLA's encoder
    reduction over the whole prompt (E = N), which ``pla_prefill(encoder_config=...)`` launches.
    Segments are not tuned: at batch 16 x 16 heads they measured slower (an extra reduction pass).
    """
    from jrt_prompt.kernels.based.triton_prefill import based_prefill
    from jrt_prompt.kernels.pla.triton_prefill import encoder_state

    if op not in ("based", "encoder"):
        raise JRTError(f"unknown tuning op {op!r}; choose based or encoder")
    device = require_cuda()
    torch_dtype = _dtype(dtype)
    configs = configs if configs is not None else _tuning_configs(op)
    q, k = (torch.randn(batch, n, heads, 16, device=device, dtype=torch_dtype) for _ in range(2))
    v = torch.randn(batch, n, heads, head_dim, device=device, dtype=torch_dtype)
    enc = torch.full((batch,), n, device=device, dtype=torch.long)

    def launch(cfg):
        if op == "encoder":
            return encoder_state(k, v, enc_lengths=enc, config=cfg)
        return based_prefill(q, k, v, config=cfg)

    out = []
    for cfg in configs:
        try:
            stats = time_ms(lambda cfg=cfg: launch(cfg), warmup=2, reps=reps)
            row = {"op": op, "config": vars(cfg), "ms": stats["median"]}
        except Exception as exc:  # a config the compiler rejects (e.g. out of shared memory)
            row = {
                "op": op,
                "config": vars(cfg),
                "ms": None,
                "note": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
            }
        log(f"tune {op} {row['config']} -> {row['ms'] if row['ms'] is not None else row['note']}")
        out.append(row)
    out.sort(key=lambda r: (r["ms"] is None, r["ms"] or 0.0))
    return out


def tune_prefill(n: int = 32768, *, log: Callable[[str], None] = print, **shape) -> tuple:
    """Tune the Based kernel and PLA's encoder reduction: (config, encoder_config, tuning rows)."""
    from jrt_prompt.kernels.taylor.config import ChunkConfig

    rows = {op: tune_chunked(n, op=op, log=log, **shape) for op in ("based", "encoder")}
    best = {op: ChunkConfig(**r[0]["config"]) if r[0]["ms"] is not None else None for op, r in rows.items()}
    return best["based"], best["encoder"], rows["based"] + rows["encoder"]


def profile_prefill(
    n: int = 32768,
    *,
    batch: int = 16,
    heads: int = 16,
    head_dim: int = 64,
    dtype: str = "bfloat16",
    config=None,
    encoder_config=None,
) -> dict:
    """GPU time per kernel (torch.profiler) of one Based and one PLA prefill: where the time goes."""
    from torch.profiler import ProfilerActivity, profile

    from jrt_prompt.kernels.taylor.config import DEFAULT_CONFIG

    device = require_cuda()
    torch_dtype = _dtype(dtype)
    config = config or DEFAULT_CONFIG
    out = {}
    for name, make in (("based", _based(1)), ("pla", _pla())):
        fn = make(batch, n, heads, head_dim, 16, torch_dtype, device, 1.0, config, encoder_config)
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        kernels = []
        for evt in prof.key_averages():
            total_us = getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0)
            if total_us:
                kernels.append({"kernel": evt.key[:90], "ms": total_us / 1e3, "calls": evt.count})
        kernels.sort(key=lambda r: -r["ms"])
        out[name] = kernels
        fn = None
        _free()
    return out
