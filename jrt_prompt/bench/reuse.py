"""`jrt bench reuse`: questions/s with and without reading a document once, and bytes per document.

For each model (real sizes, random weights, from :func:`jrt_prompt.bench.model.build_model`, with
the project's byte-level tokenizer: one token per byte) and each Q in ``questions`` (1, 4, 16, 64
by default), Q questions of ``question_tokens`` tokens are asked about one document of
``doc_tokens`` tokens (2,048 by default), each answered with ``answer_tokens`` greedy tokens:

- ``scratch``: every question reads its whole prompt, in JRT-Prompt's question-first layout
  (question, context × k, question; k = 2; JRT-RNN, which reads its prompt twice itself, and the
  Transformer read the plain prompt), all Q prompts batched through
  :func:`jrt_prompt.generation.generate`;
- ``scratch-context-first``: every question reads its whole context-first prompt (the reusable
  layout, without reuse), batched alike;
- ``reuse``: the document is read once (:func:`~jrt_prompt.generation.reuse.read_document`),
  every question continues a copy of its state (:meth:`DocumentState.ask`). Transformers reuse
  transformers' own prefix KV cache (a deep copy per question, one question at a time).

Each row's time covers everything from text to answers (tokenizing, reading, decoding): the
median of three timed calls, after a warm-up call of the same path and number of questions (CUDA
graph capture, kernel selection). ``state_bytes`` is the cached document's size: the recurrent
state, or the Transformer's KV cache of the prefix. Reuse rows also split their time into the
document's read (``read_seconds``) and the answers from its state (``ask_seconds``: the questions
read and the answers decoded), medians of the same calls.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from jrt_prompt.errors import JRTError

from .timing import bench_device, environment, error_note, release_memory, sync

MODELS = ("mamba-1.4b", "mamba2-1.3b", "jrt-rnn-1.3b", "based-1.3b", "transformer-1.3b")
QUESTIONS = (1, 4, 16, 64)
PATHS = ("scratch", "scratch-context-first", "reuse")


def _text(rng: random.Random, n: int) -> str:
    return "".join(chr(32 + rng.randrange(95)) for _ in range(n))


def _answer(model, tokenizer, path, doc, questions, repeat, answer_tokens, device):
    """Answers of ``questions`` about ``doc`` on ``path``; returns (generations, state bytes or
    None, the reuse path's parts: seconds reading the document and seconds answering from it)."""
    from jrt_prompt.generation import generate, read_document
    from jrt_prompt.prompts import JRTPrompt

    n = len(questions)
    if path == "reuse":
        started = time.perf_counter()
        state = read_document((model, tokenizer), doc, repeat)
        sync(device)
        read = time.perf_counter() - started
        gens = state.ask(questions, max_new_tokens=answer_tokens, stop=(), batch_size=max(n, 1))
        sync(device)
        parts = {"read": read, "ask": time.perf_counter() - started - read}
        return gens, state.state_bytes, parts
    template = JRTPrompt(repeat=repeat, question_first=path == "scratch" and repeat > 1)
    prompts = [template.render(doc, q) for q in questions]
    batch = n if torch.device(device).type == "cuda" else min(n, 8)
    gens = generate(model, tokenizer, prompts, max_new_tokens=answer_tokens, stop=(), batch_size=batch)
    return gens, None, None


TIMED_CALLS = 3


def run_reuse_bench(
    models: Sequence[str] = MODELS,
    *,
    questions: Sequence[int] = QUESTIONS,
    doc_tokens: int = 2048,
    question_tokens: int = 16,
    answer_tokens: int = 16,
    dtype: str = "bfloat16",
    paths: Sequence[str] = PATHS,
    device: str | None = None,
    tiny: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """One row per (model, Q, path): seconds, questions/s, and (reuse) bytes per cached document.

    A model or row that fails (not built, out of memory) gets a ``note``; the others still run.
    """
    from jrt_prompt.generation import family_of, release_graphs
    from jrt_prompt.tokenization import build_byte_tokenizer

    from .model import READS_TWICE, build_or_note, run_dtype

    for path in paths:
        if path not in PATHS:
            raise JRTError(f"path {path!r} is unknown: use one of {', '.join(PATHS)}")
    device = bench_device(device, "reuse")
    on_cuda = torch.device(device).type == "cuda"
    torch_dtype = run_dtype(dtype, device)
    tokenizer = build_byte_tokenizer(model_max_length=1 << 20)
    rng = random.Random(0)
    doc = _text(rng, doc_tokens)
    pool = [_text(rng, question_tokens - 1) + "?" for _ in range(max(questions))]
    rows = []
    for name in models:
        model, note = build_or_note(name, device=device, dtype=torch_dtype, tiny=tiny, log=log)
        if model is None:
            rows.append({"model": name, "note": note})
            continue
        repeat = 2 if READS_TWICE.get(name, True) else 1  # JRT-RNN and the Transformer read N
        kind = "recurrent state" if family_of(model) is not None else "prefix KV cache"
        for path in paths:
            for q in questions:
                row = {"model": name, "questions": q, "path": path, "repeat": repeat, "cache": kind}
                try:  # warm-up with the same Q: each batch size captures its own decode graphs
                    _answer(model, tokenizer, path, doc, pool[:q], repeat, answer_tokens, device)
                except Exception:  # the timed call records the error
                    pass
                try:
                    times, part_times = [], []
                    for _ in range(TIMED_CALLS):  # the median of a few calls: one varied by 1.4x
                        sync(device)
                        started = time.perf_counter()
                        gens, nbytes, parts = _answer(
                            model, tokenizer, path, doc, pool[:q], repeat, answer_tokens, device
                        )
                        sync(device)
                        times.append(time.perf_counter() - started)
                        part_times.append(parts)
                    seconds = statistics.median(times)
                    row.update(
                        seconds=seconds, questions_per_s=q / seconds, prompt_tokens=gens[0].prompt_tokens
                    )
                    if nbytes is not None:
                        row["state_bytes"] = int(nbytes)
                    if part_times[0] is not None:  # where reuse's time goes: one read, the answers
                        row["read_seconds"] = statistics.median(p["read"] for p in part_times)
                        row["ask_seconds"] = statistics.median(p["ask"] for p in part_times)
                except Exception as exc:  # recorded per row
                    row["note"] = error_note(exc)
                log(
                    f"{name:<18} Q={q:<3} {path:<22} "
                    + (
                        f"{row['questions_per_s']:9.2f} questions/s"
                        + (
                            f"  (read {1e3 * row['read_seconds']:.1f} ms, ask {1e3 * row['ask_seconds']:.1f} ms)"
                            if "read_seconds" in row
                            else ""
                        )
                        if "questions_per_s" in row
                        else row["note"]
                    )
                )
                rows.append(row)
                release_memory(device)
        release_graphs(model)
        model = None
        release_memory(device)
    return {
        "env": environment(),
        "shape": {
            "doc_tokens": doc_tokens,
            "question_tokens": question_tokens,
            "answer_tokens": answer_tokens,
            "dtype": dtype if on_cuda else "float32",
        },
        "rows": rows,
    }


def format_reuse_table(result: dict) -> str:
    """Markdown: questions/s per path, the reuse speed-up over JRT-Prompt from scratch, bytes per document."""
    rows = result["rows"]
    transformer_bytes = {
        r["questions"]: r["state_bytes"]
        for r in rows
        if r.get("cache") == "prefix KV cache" and "state_bytes" in r
    }
    lines = [
        "| model | Q | scratch q/s | scratch context-first q/s | reuse q/s | reuse ÷ scratch | reuse: read + ask ms "
        "| bytes per document | vs Transformer KV |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keys = list(dict.fromkeys((r["model"], r.get("questions")) for r in rows))
    for model, q in keys:
        if q is None:
            note = next(r["note"] for r in rows if r["model"] == model)
            lines.append(f"| {model} | — | {note} | — | — | — | — | — | — |")
            continue
        by = {r["path"]: r for r in rows if r["model"] == model and r.get("questions") == q}

        def cell(path, by=by):
            r = by.get(path, {})
            return f"{r['questions_per_s']:,.2f}" if "questions_per_s" in r else r.get("note", "—")

        scratch, reuse = by.get("scratch", {}), by.get("reuse", {})
        speedup = (
            f"{reuse['questions_per_s'] / scratch['questions_per_s']:.1f}×"
            if "questions_per_s" in reuse and "questions_per_s" in scratch
            else "—"
        )
        nbytes = reuse.get("state_bytes")
        share = (
            f"{100 * nbytes / transformer_bytes[q]:.2f}%"
            if nbytes is not None and transformer_bytes.get(q)
            else "—"
        )
        size = f"{nbytes / 2**20:,.1f} MiB" if nbytes is not None else "—"
        parts = (
            f"{1e3 * reuse['read_seconds']:,.1f} + {1e3 * reuse['ask_seconds']:,.1f}"
            if "read_seconds" in reuse
            else "—"
        )
        lines.append(
            f"| {model} | {q} | {cell('scratch')} | {cell('scratch-context-first')} | {cell('reuse')} | {speedup} "
            f"| {parts} | {size} | {share} |"
        )
    return "\n".join(lines)
