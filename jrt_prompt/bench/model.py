"""Whole-model prefill: what a user's command costs, on real-size architectures with random weights.

Models are built from their configurations (no download): Mamba-1.4B and Mamba-2-1.3B
(transformers' classes, with this project's kernels wired in by ``accelerate``), JRT-RNN-1.3B and
Based-1.3B (this project's modeling code, the layer pattern of the released checkpoints), GLA-1.3B
(fla's class; needs fla) and a Llama-style 1.3B Transformer (SDPA). For every model and prompt
length N the recurrent models are timed on N tokens and on 2N (what JRT-Prompt reads), JRT-RNN on N
(it reads its prompt non-causally instead), the Transformer on N.

Columns, side by side in one run:
- ``ms``: this project's path: the decode engine's prefill where the model has one (what ``jrt
  run`` / ``score`` / ``eval`` pay; the Mamba families' is written out over the project's kernels),
  else the model's forward, with ``accelerate(model)`` applied either way;
- ``ms_range``: the fastest and slowest of the row's timed repetitions (``ms`` is their median);
- ``forward_ms``: for the Mamba families, transformers' own forward with the project's kernels put
  in by ``accelerate`` (what a user calling ``model(...)`` pays);
- ``before_ms``: transformers' own PyTorch fallback for the Mamba families (what a user gets with no
  mamba-ssm source build) and the op-by-op layers (``JRT_STACK=legacy``) for JRT-RNN and Based,
  dropped for longer prompts once one took longer than ``before_cap_s``;
- ``transformer_ms``: the Transformer on N tokens at the same batch;
- ``floor_pct``: the matmul floor (2 × parameters × tokens at the measured bf16 matmul rate) over the
  measured time.
Prefill is one forward that builds the cache and keeps the logits of the last position only.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from jrt_prompt.errors import JRTArgumentError, JRTError
from jrt_prompt.generation import family_of
from jrt_prompt.generation.families import HF_SSM_FUSED

from .prefill import _dtype
from .timing import bench_device, environment, error_note, exception_line, release_memory, sync

MODELS = ("mamba-1.4b", "mamba2-1.3b", "jrt-rnn-1.3b", "based-1.3b", "gla-1.3b", "transformer-1.3b")
# Models that JRT-Prompt repeats the context for (timed on N and 2N); JRT-RNN and the Transformer read N.
READS_TWICE = {
    "mamba-1.4b": True,
    "mamba2-1.3b": True,
    "based-1.3b": True,
    "gla-1.3b": True,
    "jrt-rnn-1.3b": False,
    "transformer-1.3b": False,
}
TRANSFORMER = "transformer-1.3b"


def build_config(name: str, *, tiny: bool = False):
    """Configuration of a benchmark model; ``tiny`` shrinks every size (for tests on CPU)."""
    from transformers import LlamaConfig, Mamba2Config, MambaConfig

    from jrt_prompt.models.modeling_jrt import JRTConfig, hazy_layer_schedule

    if name in ("jrt-rnn-1.3b", "based-1.3b"):
        mixer = "prefix_linear" if name.startswith("jrt") else "based"
        layers, d = (5, 64) if tiny else (36, 1792)
        return JRTConfig(
            vocab_size=50257,
            hidden_size=d,
            num_hidden_layers=layers,
            layer_mixers=hazy_layer_schedule(layers, mixer),
            intermediate_size=2 * d,
            num_heads=4 if tiny else 16,
            attention_heads=4 if tiny else 16,
            feature_dim=16,
            enc_length=1024,
        )
    if name == "mamba-1.4b":  # state-spaces/mamba-1.4b
        return MambaConfig(
            vocab_size=50280,
            hidden_size=64 if tiny else 2048,
            num_hidden_layers=2 if tiny else 48,
            state_size=16,
            expand=2,
            conv_kernel=4,
        )
    if name == "mamba2-1.3b":  # state-spaces/mamba2-1.3b
        d = 64 if tiny else 2048
        return Mamba2Config(
            vocab_size=50288,
            hidden_size=d,
            num_hidden_layers=2 if tiny else 48,
            state_size=16 if tiny else 128,
            expand=2,
            head_dim=16 if tiny else 64,
            num_heads=(2 * d) // (16 if tiny else 64),
            n_groups=1,
            chunk_size=256,
        )
    if name == "gla-1.3b":  # fla-hub/gla-1.3B-100B
        try:
            from fla.models import GLAConfig
        except ImportError:
            raise JRTError("gla-1.3b needs fla (pip install flash-linear-attention) and a CUDA GPU") from None
        return GLAConfig(
            vocab_size=32000,
            hidden_size=64 if tiny else 2048,
            num_hidden_layers=2 if tiny else 24,
            num_heads=4,
            expand_k=0.5,
            expand_v=1,
        )
    if name == "transformer-1.3b":
        d = 64 if tiny else 2048
        return LlamaConfig(
            vocab_size=50304,
            hidden_size=d,
            intermediate_size=4 * d if tiny else 5632,
            num_hidden_layers=2 if tiny else 24,
            num_attention_heads=4 if tiny else 16,
            num_key_value_heads=4 if tiny else 16,
            max_position_embeddings=262144,
            attn_implementation="sdpa",
        )
    raise JRTError(f"unknown benchmark model {name!r}; choose from {', '.join(MODELS)}")


def build_model(name: str, *, device, dtype, tiny: bool = False, accelerated: bool = True):
    """A benchmark model with random weights, in eval mode; ``accelerated`` wires this project's kernels."""
    from transformers import LlamaForCausalLM, Mamba2ForCausalLM, MambaForCausalLM

    from jrt_prompt.models.accelerate import accelerate
    from jrt_prompt.models.modeling_jrt import JRTForCausalLM

    config = build_config(name, tiny=tiny)
    if name == "gla-1.3b":
        from fla.models import GLAForCausalLM

        cls = GLAForCausalLM
    else:
        cls = {
            "mamba-1.4b": MambaForCausalLM,
            "mamba2-1.3b": Mamba2ForCausalLM,
            "transformer-1.3b": LlamaForCausalLM,
        }.get(name, JRTForCausalLM)
    with torch.device(device):
        model = cls(config)
    model = model.to(dtype=dtype).eval()
    return accelerate(model) if accelerated else model


def run_dtype(dtype: str, device) -> torch.dtype:
    """The dtype benchmark models run in: ``dtype`` on CUDA, float32 elsewhere (CPU smoke runs)."""
    return _dtype(dtype) if torch.device(device).type == "cuda" else torch.float32


def build_or_note(name: str, *, device, dtype, tiny: bool, log: Callable[[str], None]):
    """(model, None), or (None, a "not built: ..." note, also logged) when ``name`` cannot be
    built: one model failing (fla missing, a typo) must not hide the others' rows."""
    try:
        return build_model(name, device=device, dtype=dtype, tiny=tiny), None
    except Exception as exc:
        note = f"not built: {exception_line(exc)}"
        log(f"{name:<18} {note}")
        return None, note


def _before_path(name: str):
    """A context ``before(model)`` in which ``name`` runs what it ran before this project's path, or
    None if it has no such path."""
    if name in ("mamba-1.4b", "mamba2-1.3b"):
        from jrt_prompt.models.accelerate import accelerate, restore

        @contextlib.contextmanager
        def transformers_fallback(model):
            restore()  # transformers' own functions, until the kernels go back in on leaving
            try:
                yield
            finally:
                accelerate(model)

        return transformers_fallback
    if name in ("jrt-rnn-1.3b", "based-1.3b"):

        @contextlib.contextmanager
        def legacy_stack(model):
            # the op-by-op JRT / Based layers (JRT_STACK=legacy) that preceded the fused stack
            previous = os.environ.get("JRT_STACK")
            os.environ["JRT_STACK"] = "legacy"
            try:
                yield
            finally:
                if previous is None:
                    os.environ.pop("JRT_STACK", None)
                else:
                    os.environ["JRT_STACK"] = previous

        return legacy_stack
    return None


def _times(fn, device, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def _seconds(fn, device, reps: int) -> float:
    return statistics.median(_times(fn, device, reps))


def _warm_up(fn, device, seconds: float = 1.5, most: int = 50) -> None:
    """Call ``fn`` for about ``seconds`` (at least three times): a model's first row ran high
    after a couple of warm-up calls (clocks, caches, allocator), on the Transformer too."""
    started = time.perf_counter()
    for call in range(most):
        fn()
        sync(device)
        if call >= 2 and time.perf_counter() - started > seconds:
            break


def matmul_tflops(device, dtype, size: int = 8192, reps: int = 10) -> float:
    """Measured dense matmul rate (TFLOP/s) on random data: the floor's denominator."""
    if torch.device(device).type != "cuda":
        size = 256
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=g).to(device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    seconds = _seconds(lambda: [a @ b for _ in range(reps)], device, 3) / reps
    return 2 * size**3 / seconds / 1e12


def _prefill(model, ids, family=None):
    """The model's forward over ``ids`` with its cache, or, given the decode engine's ``family``,
    the engine's prefill: what ``jrt run`` / ``score`` / ``eval`` pay to read a prompt."""
    with torch.inference_mode():
        if family is not None:
            return family.prefill(model, ids, None)
        return model(input_ids=ids, use_cache=True, logits_to_keep=1)


def run_model_bench(
    lengths: Sequence[int] = (2048, 8192, 32768),
    *,
    models: Sequence[str] = MODELS,
    batches: Sequence[int] = (1, 8),
    dtype: str = "bfloat16",
    reps: int = 3,
    before_cap_s: float = 30.0,
    time_budget_s: float | None = None,
    device: str | None = None,
    tiny: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Prefill ms per model, prompt length N, tokens read (N, or 2N for JRT-Prompt) and batch size.

    Each row holds this project's time, the time before (transformers' fallback, while under
    ``before_cap_s``), the Transformer's time on N at that batch, and the share of the matmul floor.
    A row whose warm-up prefill took over 2 s is timed once more rather than ``reps`` times; once
    ``time_budget_s`` has passed, the remaining rows are recorded as skipped.
    """
    deadline = time.monotonic() + time_budget_s if time_budget_s else None
    device = bench_device(device, "model")
    torch_dtype = run_dtype(dtype, device)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise JRTError(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    if reps < 1:
        raise JRTArgumentError(f"reps={reps} is invalid: time each row at least once")
    if before_cap_s <= 0 or (time_budget_s is not None and time_budget_s <= 0):
        raise JRTArgumentError(
            f"before_cap_s={before_cap_s} and time_budget_s={time_budget_s} must be positive seconds"
        )
    tflops = matmul_tflops(device, torch_dtype)
    log(f"measured matmul rate: {tflops:.0f} TFLOP/s ({dtype})")
    # The Transformer first: every other row is compared with it.
    order = [TRANSFORMER] + [m for m in models if m != TRANSFORMER]
    transformer_ms: dict[tuple[int, int], float] = {}
    rows = []
    for name in order:
        try:
            model = build_model(name, device=device, dtype=torch_dtype, tiny=tiny)
        except Exception as exc:  # one family failing (e.g. fla missing) must not hide the others
            note = error_note(exc)
            log(f"{name:<17} {note}")
            rows.append({"model": name, "note": note})
            continue
        params = sum(p.numel() for p in model.parameters())
        vocab = model.config.vocab_size
        family = family_of(model)
        # the Mamba families' engine prefill is written out; their forward is timed beside it
        time_forward = family is HF_SSM_FUSED
        before = _before_path(name)
        before_ok = {b: before is not None for b in batches}
        reads = (1, 2) if READS_TWICE[name] else (1,)
        first_row = True
        for n in lengths:
            for factor in reads:
                tokens = factor * n
                for batch in batches:
                    row = {"model": name, "params": params, "n": n, "tokens_read": tokens, "batch": batch}
                    if deadline is not None and time.monotonic() > deadline:
                        row["note"] = "skipped: the benchmark's time budget was spent"
                        log(_row_line(row))
                        rows.append(row)
                        continue
                    gen = torch.Generator(device="cpu").manual_seed(tokens + batch)
                    ids = torch.randint(0, vocab, (batch, tokens), generator=gen).to(device)
                    try:
                        # warm-up: compilation, autotuning, allocator growth (and, on a model's
                        # first row, clocks and caches: one warm-up call left the first row high)
                        run = lambda m=model, x=ids, f=family: _prefill(m, x, f)  # noqa: E731
                        if first_row:
                            _warm_up(run, device)
                            first_row = False
                        warm = _seconds(run, device, 1)
                        n_reps = reps if warm < 2.0 else 1
                        times = _times(run, device, n_reps)
                        seconds = statistics.median(times)
                        row["ms"] = seconds * 1e3
                        # the spread of the repetitions: rows of one run are compared, so a
                        # reader must see how far apart a row's own calls were
                        row["ms_range"] = [min(times) * 1e3, max(times) * 1e3]
                        row["tokens_per_s"] = batch * tokens / seconds
                        row["floor_pct"] = 100 * (2 * params * batch * tokens / (tflops * 1e12)) / seconds
                        if time_forward:
                            forward = lambda m=model, x=ids: _prefill(m, x)  # noqa: E731
                            _seconds(forward, device, 1)
                            row["forward_ms"] = _seconds(forward, device, n_reps) * 1e3
                    except Exception as exc:
                        row["note"] = error_note(exc)
                    if before_ok[batch]:
                        try:
                            with before(model):
                                row["before_ms"] = _seconds(lambda m=model, x=ids: _prefill(m, x), device, 1) * 1e3
                        except Exception as exc:
                            row["before_note"] = error_note(exc)
                        if row.get("before_ms", 0) > before_cap_s * 1e3 or "before_note" in row:
                            before_ok[batch] = False
                    elif before is not None:
                        row["before_note"] = f"skipped: a shorter prompt took > {before_cap_s:.0f} s"
                    if name == TRANSFORMER and factor == 1 and "ms" in row:
                        transformer_ms[(n, batch)] = row["ms"]
                    if (n, batch) in transformer_ms:
                        row["transformer_ms"] = transformer_ms[(n, batch)]
                    log(_row_line(row))
                    rows.append(row)
                    ids = None
                    release_memory(device)
        model = None
        release_memory(device)
    return {
        "env": environment(),
        "shape": {"dtype": dtype, "batches": list(batches), "lengths": list(lengths), "reps": reps},
        "matmul_tflops": tflops,
        "rows": rows,
    }


def _row_line(row: dict) -> str:
    head = f"{row['model']:<17} N={row['n']:>6} read {row['tokens_read']:>6} b={row['batch']:<2}"
    if "ms" not in row:
        return f"{head} {row.get('note', '')}"
    low, high = row.get("ms_range", (row["ms"], row["ms"]))
    parts = [f"{row['ms']:9.1f} ms ({low:.1f}-{high:.1f})", f"floor {row['floor_pct']:5.1f}%"]
    if "forward_ms" in row:
        parts.append(f"forward {row['forward_ms']:8.1f} ms")
    if "before_ms" in row:
        parts.append(f"before {row['before_ms']:10.1f} ms ({row['before_ms'] / row['ms']:.0f}x)")
    if "transformer_ms" in row:
        parts.append(f"Transformer(N) {row['transformer_ms']:8.1f} ms ({row['ms'] / row['transformer_ms']:.2f}x)")
    return f"{head} " + "  ".join(parts)


def format_model_table(result: dict) -> str:
    lines = [
        "| model | batch | N | tokens read | ms | model forward ms | before (transformers fallback) ms | "
        "speed-up | Transformer on N ms | ÷ Transformer | % of matmul floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "n" not in r:
            lines.append(f"| {r['model']} | — | — | — | — | — | — | — | — | — | {r.get('note', '')} |")
            continue
        if "ms" not in r:
            lines.append(
                f"| {r['model']} | {r['batch']} | {r['n']:,} | {r['tokens_read']:,} | {r.get('note', '')} "
                "| — | — | — | — | — | — |"
            )
            continue
        before = f"{r['before_ms']:,.1f}" if "before_ms" in r else ("skipped" if "before_note" in r else "—")
        speedup = f"{r['before_ms'] / r['ms']:,.0f}×" if "before_ms" in r else "—"
        tr = f"{r['transformer_ms']:,.1f}" if "transformer_ms" in r else "—"
        ratio = f"{r['ms'] / r['transformer_ms']:.2f}" if "transformer_ms" in r else "—"
        forward = f"{r['forward_ms']:,.1f}" if "forward_ms" in r else "—"
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['n']:,} | {r['tokens_read']:,} | {r['ms']:,.1f} | {forward} | {before} | "
            f"{speedup} | {tr} | {ratio} | {r['floor_pct']:.0f}% |"
        )
    return "\n".join(lines)


def plot_model_bench(result: dict, path) -> str:
    """Prefill ms against tokens read, one panel per batch size, log-log; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in result["rows"] if "batch" in r})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False)
    for ax, batch in zip(axes[0], batches, strict=True):
        for name in dict.fromkeys(r["model"] for r in result["rows"] if "ms" in r):
            pts = sorted((r["tokens_read"], r["ms"]) for r in result["rows"]
                         if r.get("batch") == batch and r["model"] == name and "ms" in r)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=name)
            before = sorted((r["tokens_read"], r["before_ms"]) for r in result["rows"]
                            if r.get("batch") == batch and r["model"] == name and "before_ms" in r)
            if before:
                ax.plot(*zip(*before, strict=True), marker="x", linestyle="--", label=f"{name} (before)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens read")
        ax.set_ylabel("prefill ms")
        ax.set_title(f"batch {batch} — {result['env'].get('device', '')}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
