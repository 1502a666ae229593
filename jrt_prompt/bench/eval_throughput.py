"""`jrt bench eval-throughput`: the shape of the paper's Table-1 protocol, timed end to end.

The protocol: 6 tasks × 2,000 prompts = 12,000 prompts whose lengths spread evenly over
500–2,000 tokens, each asked in the default form and in the twice (JRT-Prompt) form, so 24,000
generations of up to 48 greedy tokens, stopping at the first newline. The real task data is not
reachable here, so the text is synthetic (random lowercase words, read by the byte tokenizer:
one token per character) and the model has random weights at real size (from
:func:`jrt_prompt.bench.model.build_model`). Every prompt goes through :func:`jrt_prompt.generate`
(the decode engine for recurrent models, transformers' ``generate`` for the Transformer), as
``jrt eval`` runs it. ``prompts`` scales the run down (the same length spread).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence

import torch

from jrt_prompt.errors import JRTArgumentError

from .timing import bench_device, environment, error_note, release_memory

PAPER_PROMPTS = 12_000
MODELS = ("mamba-1.4b", "mamba2-1.3b", "jrt-rnn-1.3b", "based-1.3b", "gla-1.3b", "transformer-1.3b")


def synthetic_records(count: int, min_tokens: int, max_tokens: int, seed: int = 0) -> list[tuple[str, str]]:
    """``count`` (context, question) pairs whose default-form prompt is between ``min_tokens`` and
    ``max_tokens`` byte tokens, lengths evenly spread."""
    if count < 1:
        raise JRTArgumentError(f"prompts={count} is invalid: time at least one prompt")
    if not 0 < min_tokens <= max_tokens:
        raise JRTArgumentError(f"prompt lengths {min_tokens}-{max_tokens} are invalid: use 0 < min <= max")
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    out = []
    for i in range(count):
        target = min_tokens + (max_tokens - min_tokens) * i // max(count - 1, 1)
        key = "".join(rng.choice(letters) for _ in range(6))
        question = f"What is the value of {key}?"
        fact = f"{key} is {rng.randint(0, 9999)}."
        budget = max(target - len(question) - 1 - len(fact) - 1, 1)
        words, size = [], 0
        while size < budget:
            word = "".join(rng.choice(letters) for _ in range(rng.randint(2, 9)))
            words.append(word)
            size += len(word) + 1
        filler = " ".join(words)[:budget]
        at = rng.randint(0, len(filler))
        out.append((f"{filler[:at]} {fact} {filler[at:]}".strip(), question))
    return out


def warmup_prompts(texts: dict[str, list[str]]) -> list[list[str]]:
    """Untimed calls before the timed run: two short prompts, the two longest, then four from the
    middle of the longest form, so every shape change that makes torch.compile compile again
    (the first shape, a new length, a new batch size) happens here, not in the timed run."""
    longest = max(texts.values(), key=lambda batch: sum(map(len, batch)))
    shortest = min(texts.values(), key=lambda batch: sum(map(len, batch)))
    by_length = sorted(longest, key=len)
    mid = len(by_length) // 2
    calls = [sorted(shortest, key=len)[:2], by_length[-2:], by_length[max(mid - 2, 0) : mid + 2]]
    return [call for call in calls if call]


def run_eval_throughput(
    models: Sequence[str] = ("mamba-1.4b",),
    *,
    prompts: int = PAPER_PROMPTS,
    min_tokens: int = 500,
    max_tokens: int = 2000,
    max_new_tokens: int = 48,
    batch_size: int | None = None,
    dtype: str = "bfloat16",
    device: str | None = None,
    tiny: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Wall time and prompts/s of ``2 × prompts`` generations per model (default + twice form)."""
    from jrt_prompt import JRTPrompt, generate
    from jrt_prompt.generation import family_of, release_graphs
    from jrt_prompt.tokenization import build_byte_tokenizer

    from .model import build_or_note, run_dtype

    device = bench_device(device, "eval-throughput")
    on_cuda = torch.device(device).type == "cuda"
    torch_dtype = run_dtype(dtype, device)
    tokenizer = build_byte_tokenizer(model_max_length=1 << 20)
    records = synthetic_records(prompts, min_tokens, max_tokens)
    forms = {"default": JRTPrompt(repeat=1), "twice": JRTPrompt(repeat=2)}
    texts = {form: [t.render(c, q) for c, q in records] for form, t in forms.items()}
    rows = []
    for name in models:
        row = {"model": name, "prompts": prompts, "generations": 2 * prompts}
        model, note = build_or_note(name, device=device, dtype=torch_dtype, tiny=tiny, log=log)
        if model is None:
            row["note"] = note
            rows.append(row)
            continue
        row["path"] = "decode engine" if family_of(model) is not None else "transformers generate"
        try:
            # One-off costs, timed apart: kernel compilation, CUDA-graph capture, and torch.compile
            # of the JRT stack's fused functions, which compiles for the first shape it sees and
            # once more with dynamic sizes when the length, then the batch, changes.
            warm_started = time.perf_counter()
            for warm in warmup_prompts(texts):
                generate(model, tokenizer, warm, max_new_tokens=max_new_tokens, batch_size=batch_size)
            if on_cuda:
                torch.cuda.synchronize()
            warmup = time.perf_counter() - warm_started
            started = time.perf_counter()
            per_form = {}
            tokens = 0
            for form, batch in texts.items():
                t0 = time.perf_counter()
                gens = generate(model, tokenizer, batch, max_new_tokens=max_new_tokens, batch_size=batch_size)
                per_form[form] = time.perf_counter() - t0
                tokens += sum(g.answer_tokens for g in gens)
            seconds = time.perf_counter() - started
            row.update(
                seconds=seconds,
                prompts_per_s=2 * prompts / seconds,
                seconds_per_form=per_form,
                answer_tokens=tokens,
                warmup_seconds=warmup,
                # the one-off costs once, the timed rate for the protocol's 24,000 generations
                projected_paper_seconds=warmup + seconds * PAPER_PROMPTS / prompts,
            )
        except Exception as exc:  # recorded per model
            row["note"] = error_note(exc)
        log(
            f"{name:<18} {row.get('path', '')}: "
            + (
                f"{2 * prompts} generations in {row['seconds']:.1f} s after {row['warmup_seconds']:.1f} s of "
                f"warm-up ({row['prompts_per_s']:.1f} prompts/s; "
                f"Table-1 size: {row['projected_paper_seconds'] / 60:.1f} min)"
                if "seconds" in row
                else row["note"]
            )
        )
        rows.append(row)
        release_graphs(model)
        model = None
        release_memory(device)
    return {
        "env": environment(),
        "shape": {
            "prompts": prompts,
            "forms": list(forms),
            "lengths": [min_tokens, max_tokens],
            "max_new_tokens": max_new_tokens,
            "dtype": dtype,
            "batch_size": batch_size,
        },
        "rows": rows,
    }


def format_eval_throughput_table(result: dict) -> str:
    lines = [
        "| model | path | generations | warm-up s | wall s | prompts/s | Table-1 size (min) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "seconds" in r:
            lines.append(
                f"| {r['model']} | {r['path']} | {r['generations']:,} | {r['warmup_seconds']:.1f} | {r['seconds']:.1f} | "
                f"{r['prompts_per_s']:.1f} | {r['projected_paper_seconds'] / 60:.1f} |"
            )
        else:
            lines.append(
                f"| {r['model']} | {r.get('path', '—')} | {r['generations']:,} | — | — | — | {r.get('note', '')} |"
            )
    return "\n".join(lines)
