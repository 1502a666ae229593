"""`jrt bench decode-model`: greedy decode tokens/s of whole models, before and after the engine.

For each model (real sizes, random weights, from :func:`jrt_prompt.bench.model.build_model`) and
batch size (1, 8, 64 by default), after a prompt of ``prompt_tokens`` random tokens:

- ``before``: transformers' ``generate`` (the path every answer took before the decode engine);
  tokens/s from the difference between generating ``decode_tokens + 1`` and 1 token(s), so the
  prefill cancels out;
- ``after``: the constant-state decode engine (CUDA graph of ``steps_per_sync`` steps replayed);
  the decode phase is timed on its own, after a warm-up call that captures the graph;
- ``model-step`` (Mamba and Mamba-2 only): the same engine replaying the model's own one-token
  forward instead of the step written out over the project's kernels
  (:mod:`jrt_prompt.generation.ssm_step`), so the table shows what each part buys;
- the Transformer has no engine path: its ``after`` is transformers' static cache with
  ``torch.compile`` (``cache_implementation="static"``), its strongest decode path here.

``% of limit``: a decode step reads every weight once, so ``batch × copy bandwidth / weight
bytes`` tokens/s bounds it; the copy bandwidth is measured on the device (a large tensor copy,
read + write bytes over time).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch

from .timing import bench_device, environment, error_note, release_memory, sync

MODELS = ("mamba-1.4b", "mamba2-1.3b", "jrt-rnn-1.3b", "based-1.3b", "gla-1.3b", "transformer-1.3b")
BATCHES = (1, 8, 64)


def copy_bandwidth(device, nbytes: int = 1 << 30, reps: int = 10) -> float:
    """Bytes/s of a device-to-device tensor copy (bytes read + bytes written per second)."""
    src = torch.empty(nbytes // 2, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        dst.copy_(src)
    end.record()
    end.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / reps
    return 2 * src.numel() * src.element_size() / seconds


def weight_bytes(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() in seen:  # tied embeddings are read once
            continue
        seen.add(p.data_ptr())
        total += p.numel() * p.element_size()
    return total


def _hf_tokens_per_s(model, ids, decode_tokens: int, device, **extra) -> float:
    def run(n):
        sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
                **extra,
            )
        sync(device)
        return time.perf_counter() - start

    # Warm-up of both lengths timed below: a static cache is sized by the generated length, so
    # each length compiles its own graphs.
    run(1)
    run(decode_tokens + 1)
    one = min(run(1) for _ in range(2))
    many = run(decode_tokens + 1)
    return ids.shape[0] * decode_tokens / max(many - one, 1e-9)


def _engine_tokens_per_s(model, ids, decode_tokens: int, family=None) -> float:
    from jrt_prompt.generation import DecodeEngine, family_of

    engine = DecodeEngine(model, None, family or family_of(model))
    engine.greedy_ids(ids, decode_tokens + 1)  # warm-up: graph capture for this batch size
    _, _, seconds = engine.greedy_ids(ids, decode_tokens + 1)
    steps = math.ceil(decode_tokens / engine.steps) * engine.steps
    return ids.shape[0] * steps / seconds


def run_decode_model_bench(
    models: Sequence[str] = MODELS,
    *,
    batches: Sequence[int] = BATCHES,
    prompt_tokens: int = 512,
    decode_tokens: int = 64,
    dtype: str = "bfloat16",
    paths: Sequence[str] = ("before", "model-step", "after"),
    device: str | None = None,
    tiny: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """One row per (model, batch, path): decode tokens/s and its share of the bandwidth limit.

    A model or row that fails (a name :mod:`jrt_prompt.bench.model` does not build, out of
    memory) gets a ``note`` and the others still run.
    """
    from jrt_prompt.generation import family_of
    from jrt_prompt.generation.families import HF_SSM, HF_SSM_FUSED

    from .model import build_or_note, run_dtype

    device = bench_device(device, "decode-model")
    on_cuda = torch.device(device).type == "cuda"
    torch_dtype = run_dtype(dtype, device)
    bandwidth = copy_bandwidth(device) if on_cuda else None
    rows = []
    for name in models:
        model, note = build_or_note(name, device=device, dtype=torch_dtype, tiny=tiny, log=log)
        if model is None:
            rows.append({"model": name, "note": note})
            continue
        nbytes = weight_bytes(model)
        family = family_of(model)
        covered = family is not None
        vocab = min(model.config.vocab_size, 50000)
        for batch in batches:
            gen = torch.Generator().manual_seed(batch)
            ids = torch.randint(0, vocab, (batch, prompt_tokens), generator=gen).to(device)
            for path in paths:
                if path == "model-step" and family is not HF_SSM_FUSED:
                    continue  # only the Mamba families have a second step to compare
                how = {
                    "before": "transformers generate",
                    "model-step": "decode engine, model's own step",
                    "after": "decode engine" if covered else "static cache + torch.compile",
                }[path]
                row = {"model": name, "batch": batch, "path": path, "method": how, "weight_bytes": nbytes}
                try:
                    if path == "before":
                        tps = _hf_tokens_per_s(model, ids, decode_tokens, device)
                    elif path == "model-step":
                        tps = _engine_tokens_per_s(model, ids, decode_tokens, HF_SSM)
                    elif covered:
                        tps = _engine_tokens_per_s(model, ids, decode_tokens)
                    else:
                        tps = _hf_tokens_per_s(
                            model, ids, decode_tokens, device, cache_implementation="static"
                        )
                    row["tokens_per_s"] = tps
                    if bandwidth:
                        limit = batch * bandwidth / nbytes
                        row.update(limit_tokens_per_s=limit, share_of_limit=tps / limit)
                except Exception as exc:  # recorded per row
                    row["note"] = error_note(exc)
                log(
                    f"{name:<18} batch {batch:>3} {how:<28} "
                    + (
                        f"{row['tokens_per_s']:10.1f} tok/s"
                        + (
                            f"  {100 * row['share_of_limit']:5.1f}% of limit"
                            if "share_of_limit" in row
                            else ""
                        )
                        if "tokens_per_s" in row
                        else row["note"]
                    )
                )
                rows.append(row)
                release_memory(device)
            ids = None
        from jrt_prompt.generation import release_graphs

        release_graphs(model)
        model = None
        release_memory(device)
    return {
        "env": environment(),
        "shape": {"prompt_tokens": prompt_tokens, "decode_tokens": decode_tokens, "dtype": dtype},
        "copy_bandwidth_bytes_per_s": bandwidth,
        "rows": rows,
    }


def format_decode_model_table(result: dict) -> str:
    lines = [
        "| model | batch | before (generate) tok/s | engine, model's own step tok/s | after tok/s "
        "| after method | speed-up | % of limit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = result["rows"]
    keys = list(dict.fromkeys((r["model"], r.get("batch")) for r in rows))
    for model, batch in keys:
        if batch is None:
            note = next(r["note"] for r in rows if r["model"] == model)
            lines.append(f"| {model} | — | — | — | — | {note} | — | — |")
            continue
        def find(path, model=model, batch=batch):
            return next(
                (r for r in rows if (r["model"], r.get("batch"), r.get("path")) == (model, batch, path)), {}
            )

        before, own, after = find("before"), find("model-step"), find("after")

        def cell(r):
            return f"{r['tokens_per_s']:,.0f}" if "tokens_per_s" in r else r.get("note", "—")

        own_cell = cell(own) if own else "—"

        speedup = (
            f"{after['tokens_per_s'] / before['tokens_per_s']:.1f}×"
            if "tokens_per_s" in after and "tokens_per_s" in before
            else "—"
        )
        share = f"{100 * after['share_of_limit']:.1f}%" if "share_of_limit" in after else "—"
        lines.append(
            f"| {model} | {batch} | {cell(before)} | {own_cell} | {cell(after)} | {after.get('method', '—')} "
            f"| {speedup} | {share} |"
        )
    return "\n".join(lines)
