"""Per-layer and whole-model prefill time of JRT-RNN-1.3B, earlier stack against the fast one.

On a CUDA GPU, bf16, batch 1, random weights, the 1.3B layout (d 1792, 36 layers, 16 heads,
feature dim 16, sliding window 256 -> 128 earlier keys, MLP 3584), at each N:

* one block of each layer type (norm, mixer, norm, SwiGLU MLP): BaseConv, prefix linear
  attention, sliding-window attention; the MLP alone (norm + SwiGLU);
* the whole model (``jrt_prompt.bench.model.build_model("jrt-rnn-1.3b")``, prefill building the
  cache, logits of the last position), and one decode step after a prompt of N tokens;
* the Llama-style 1.3B Transformer (SDPA) on N tokens, the target to beat.

Variants, chosen through the environment variables the model reads on every call
(see ``jrt_prompt/models/fused.py``):

* ``legacy``      JRT_STACK=legacy (op by op, N×N sliding-window mask)
* ``fast-eager``  JRT_STACK=fast JRT_COMPILE=0 (blocked sliding window, fused functions uncompiled)
* ``fast``        JRT_STACK=fast (blocked sliding window, fused functions compiled)
* ``fast-flex``   JRT_STACK=fast JRT_SWA=flex (flex_attention sliding window)

Times are medians of CUDA-event-timed repeats after warm-up (which also compiles). A variant that
fails records its error in its cell; the table is printed last.

    python scripts/bench_jrt_layers.py                      # N = 2048, 8192
    python scripts/bench_jrt_layers.py --lengths 2048 4096 8192 32768 --json out.json
    python scripts/bench_jrt_layers.py --profile 8192       # also a kernel profile of the whole model
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

VARIANTS = {
    "legacy": {"JRT_STACK": "legacy", "JRT_COMPILE": "1", "JRT_SWA": "blocks"},
    "fast-eager": {"JRT_STACK": "fast", "JRT_COMPILE": "0", "JRT_SWA": "blocks"},
    "fast": {"JRT_STACK": "fast", "JRT_COMPILE": "1", "JRT_SWA": "blocks"},
    "fast-flex": {"JRT_STACK": "fast", "JRT_COMPILE": "1", "JRT_SWA": "flex"},
}
LAYER_ITEMS = ("base_conv block", "prefix_linear block", "sliding_window block", "mlp (norm + swiglu)")


@contextlib.contextmanager
def variant_env(name: str):
    saved = {k: os.environ.get(k) for k in VARIANTS[name]}
    os.environ.update(VARIANTS[name])
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _layer_fns(model, ids):
    """One callable per layer item, each running that piece on the embedded prompt."""
    from jrt_prompt.models import fused
    from jrt_prompt.models.modeling_jrt import MixerInputs

    transformer = model.transformer
    kinds = model.config.layer_mixers
    hidden = transformer.embeddings(ids).float()
    b, l = ids.shape
    positions = torch.arange(l, device=ids.device)[None].expand(b, l)

    def inputs():
        return MixerInputs(None, positions, False, settings=fused.stack_settings())

    def block_fn(kind):
        layer = transformer.layers[kinds.index(kind)]
        return lambda: layer(hidden, None, inputs(), None, False, False)

    mlp_layer = transformer.layers[0]

    def mlp():
        settings = fused.stack_settings()
        return mlp_layer.mlp(mlp_layer.norm2(hidden, settings), settings)

    return {
        "base_conv block": block_fn("base_conv"),
        "prefix_linear block": block_fn("prefix_linear"),
        "sliding_window block": block_fn("sliding_window"),
        "mlp (norm + swiglu)": mlp,
    }


def _decode_fn(model, ids):
    """Prefills (when called), returns the step: one token through the cache."""

    def setup():
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
        return lambda: model(input_ids=token, past_key_values=cache, use_cache=True)

    return setup


def _cell(fn, warmup: int, reps: int, timer, setup: bool = False):
    try:
        if setup:
            fn = fn()
        return {"ms": timer(fn, warmup=warmup, reps=reps)["median"]}
    except torch.cuda.OutOfMemoryError:
        return {"error": "out of GPU memory"}
    except Exception as exc:  # one failing variant must not kill the table
        traceback.print_exc(file=sys.stderr)
        first = str(exc).splitlines()[0][:120] if str(exc) else ""
        return {"error": f"{type(exc).__name__}: {first}"}


def _free():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run(
    lengths,
    variants,
    *,
    warmup: int,
    reps: int,
    transformer: bool,
    log=print,
    timer=None,
    device: str = "cuda",
    tiny: bool = False,
) -> list[dict]:
    """Rows ``{"item", "n", "cells": {variant: {"ms"} or {"error"}}}``. ``timer`` (default CUDA
    events), ``device`` and ``tiny`` (shrunken sizes) exist so the script can be smoke-tested on CPU."""
    from jrt_prompt.bench.model import build_model

    if timer is None:
        from jrt_prompt.bench.timing import time_ms as timer
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows = []
    model = build_model("jrt-rnn-1.3b", device=device, dtype=dtype, tiny=tiny)
    whole_item = f"whole model ({model.config.num_hidden_layers} layers)"
    log(
        f"jrt-rnn-1.3b: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters, {model.config.layer_mixers.count('sliding_window')} sliding-window layers"
    )
    for n in lengths:
        gen = torch.Generator(device="cpu").manual_seed(n)
        ids = torch.randint(0, model.config.vocab_size, (1, n), generator=gen).to(device)
        results: dict[str, dict] = {}
        with torch.inference_mode():
            for variant in variants:
                with variant_env(variant):
                    fns = _layer_fns(model, ids)
                    for item in LAYER_ITEMS:
                        results.setdefault(item, {})[variant] = _cell(fns[item], warmup, reps, timer)
                    whole = lambda ids=ids: model(input_ids=ids, use_cache=True, logits_to_keep=1)  # noqa: E731
                    results.setdefault(whole_item, {})[variant] = _cell(whole, warmup, reps, timer)
                    results.setdefault("decode step (1 token)", {})[variant] = _cell(
                        _decode_fn(model, ids), 5, 4 * reps, timer, setup=True
                    )
                    _free()
                    log(
                        f"N={n} {variant}: "
                        + ", ".join(
                            f"{item} {cells[variant].get('ms', float('nan')):.2f} ms"
                            for item, cells in results.items()
                        )
                    )
        for item, cells in results.items():
            rows.append({"item": item, "n": n, "cells": cells})
        ids = None
        _free()
    model = None
    _free()
    if transformer:
        model = build_model("transformer-1.3b", device=device, dtype=dtype, tiny=tiny)
        with torch.inference_mode():
            for n in lengths:
                ids = torch.randint(0, model.config.vocab_size, (1, n), device=device)
                cell = _cell(
                    lambda ids=ids: model(input_ids=ids, use_cache=True, logits_to_keep=1),
                    warmup,
                    reps,
                    timer,
                )
                rows.append({"item": "transformer-1.3b (SDPA)", "n": n, "cells": {"reference": cell}})
                log(f"N={n} transformer-1.3b: {cell}")
                ids = None
                _free()
        model = None
        _free()
    return rows


def format_table(rows, variants) -> str:
    header = "| item | N | " + " | ".join(f"{v} ms" for v in variants) + " | legacy / fast |"
    lines = [header, "|---|---|" + "---|" * (len(variants) + 1)]
    for row in rows:
        cells = row["cells"]
        if "reference" in cells:
            value = cells["reference"]
            text = f"{value['ms']:.2f}" if "ms" in value else value["error"]
            lines.append(f"| {row['item']} | {row['n']:,} | {text} |" + " |" * len(variants))
            continue
        texts = []
        for v in variants:
            cell = cells.get(v, {})
            texts.append(f"{cell['ms']:.2f}" if "ms" in cell else cell.get("error", "—"))
        ratio = "—"
        if "ms" in cells.get("legacy", {}) and "ms" in cells.get("fast", {}):
            ratio = f"{cells['legacy']['ms'] / cells['fast']['ms']:.2f}×"
        lines.append(f"| {row['item']} | {row['n']:,} | " + " | ".join(texts) + f" | {ratio} |")
    return "\n".join(lines)


def profile(n: int, variants, log=print) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from jrt_prompt.bench.model import build_model

    model = build_model("jrt-rnn-1.3b", device="cuda", dtype=torch.bfloat16)
    ids = torch.randint(0, model.config.vocab_size, (1, n), device="cuda")
    with torch.inference_mode():
        for variant in variants:
            with variant_env(variant):
                try:
                    for _ in range(3):
                        model(input_ids=ids, use_cache=True, logits_to_keep=1)
                    torch.cuda.synchronize()
                    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                        model(input_ids=ids, use_cache=True, logits_to_keep=1)
                        torch.cuda.synchronize()
                    log(f"\n### profile, {variant}, N={n}")
                    log(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
                except Exception:
                    traceback.print_exc()
    model = None
    _free()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--no-transformer", action="store_true", help="skip the Transformer reference rows")
    parser.add_argument("--profile", type=int, metavar="N", help="also print a kernel profile at N tokens")
    parser.add_argument("--json", help="write the rows and the environment here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "bench_jrt_layers.py needs a CUDA GPU; none is visible (check CUDA_VISIBLE_DEVICES)",
            file=sys.stderr,
        )
        return 2
    from jrt_prompt.bench.timing import environment

    env = environment()
    rows = run(
        args.lengths, args.variants, warmup=args.warmup, reps=args.reps, transformer=not args.no_transformer
    )
    if args.profile:
        profile(args.profile, [v for v in ("legacy", "fast") if v in args.variants])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"env": env, "batch": 1, "dtype": "bfloat16", "rows": rows}, fh, indent=1)
    print(
        f"\nJRT-RNN-1.3B layers, batch 1, bf16, {env['device']}, torch {env['torch']}, triton {env['triton']}"
    )
    print(format_table(rows, args.variants))
    from jrt_prompt.models import fused

    if fused.compile_failures():
        names = ", ".join(fused.compile_failures())
        print(f"\nNote: torch.compile failed for {names}; those ran eagerly in the compiled variants.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
