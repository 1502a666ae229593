"""Where reading a document once and answering Q questions from its state spends its time, for the
benchmark models at real sizes (random weights, bf16, the byte tokenizer of `jrt bench reuse`).

    python scripts/profile_reuse.py mamba2-1.3b,jrt-rnn-1.3b 1,16

Per (model, Q), after two warm-up calls: wall milliseconds (GPU synchronized between parts) of
the document's read, the stacking of Q copies of its state, the questions read from the state
(`continue_rows`) and the answers decoded (`decode_prefilled`); then, from torch.profiler over
one whole `read` + `ask`, the summed CUDA kernel time against the wall time (a wide gap means
the host, not the GPU, sets the pace) and the largest kernels. Needs a CUDA GPU.
"""

import random
import sys
import time

import torch
from profile_decode import print_kernel_table

from jrt_prompt.bench.model import READS_TWICE, build_model
from jrt_prompt.generation import read_document, release_graphs
from jrt_prompt.generation.reuse import _cache_with
from jrt_prompt.tokenization import build_byte_tokenizer

DOC_TOKENS, QUESTION_TOKENS, ANSWER_TOKENS = 2048, 16, 16


def _text(rng: random.Random, n: int) -> str:
    return "".join(chr(32 + rng.randrange(95)) for _ in range(n))


def _timed(fn):
    torch.cuda.synchronize()
    started = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, 1e3 * (time.perf_counter() - started)


def parts(model, tokenizer, doc, questions, repeat) -> dict:
    """One read and ask, part by part, each timed on its own (the GPU idle between parts)."""
    state, read_ms = _timed(lambda: read_document((model, tokenizer), doc, repeat))
    reader = state.reader
    engine = reader.engine()
    n = len(questions)
    encoded = [tokenizer(state.prompt.suffix(q), add_special_tokens=False)["input_ids"] for q in questions]
    with torch.inference_mode():
        cache, stack_ms = _timed(
            lambda: _cache_with(
                reader, state.template, [leaf.expand(n, *leaf.shape[1:]).clone() for leaf in state.leaves]
            )
        )
        (first, continued), extend_ms = _timed(
            lambda: engine.continue_rows(cache, encoded, slots_limit=n, pad_id=reader.pad_id)
        )
        prefilled = [(list(range(n)), _cache_with(reader, cache, continued))]
        _, decode_ms = _timed(
            lambda: engine.decode_prefilled(
                first,
                prefilled,
                [state.tokens + len(e) for e in encoded],
                max_new_tokens=ANSWER_TOKENS,
                stop=(),
                slots_limit=n,
            )
        )
    return {"read": read_ms, "stack": stack_ms, "questions": extend_ms, "decode": decode_ms}


def profile(name: str, qs: list[int]) -> None:
    model = build_model(name, device="cuda", dtype=torch.bfloat16)
    tokenizer = build_byte_tokenizer(model_max_length=1 << 20)
    rng = random.Random(0)
    doc = _text(rng, DOC_TOKENS)
    pool = [_text(rng, QUESTION_TOKENS - 1) + "?" for _ in range(max(qs))]
    repeat = 2 if READS_TWICE.get(name, True) else 1
    for q in qs:
        questions = pool[:q]

        def whole(loaded=(model, tokenizer), questions=questions, q=q):
            state = read_document(loaded, doc, repeat)
            return state.ask(questions, max_new_tokens=ANSWER_TOKENS, stop=(), batch_size=q)

        for _ in range(2):
            whole()
        runs = [parts(model, tokenizer, doc, questions, repeat) for _ in range(3)]
        med = {k: sorted(r[k] for r in runs)[1] for k in runs[0]}
        _, whole_ms = _timed(whole)
        print(
            f"{name} Q={q}: whole {whole_ms:.1f} ms; parts (medians of 3) "
            + ", ".join(f"{k} {v:.1f}" for k, v in med.items())
            + f" = {sum(med.values()):.1f} ms"
        )
        torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        ) as prof:
            whole()
            torch.cuda.synchronize()
        wall = 1e3 * (time.perf_counter() - started)
        print(f"  profiled: wall {wall:.1f} ms (with profiler)")
        print_kernel_table(prof, 12)
    release_graphs(model)
    torch.cuda.empty_cache()


if __name__ == "__main__":
    if len(sys.argv) != 3 or not torch.cuda.is_available():
        sys.exit("usage (on a CUDA GPU): python scripts/profile_reuse.py MODEL[,MODEL...] Q[,Q...]")
    for model_name in sys.argv[1].split(","):
        profile(model_name, [int(q) for q in sys.argv[2].split(",")])
