"""``generate``: greedy answers for a list of prompts, on the fastest path the model allows.

Constant-state models (Mamba, Mamba-2, Falcon-Mamba, RWKV, JRT-RNN / Based / the demo model,
fla's recurrent models) go through the decode engine (:mod:`.engine`); every other model
(Transformers, unknown families) through transformers' ``generate``. Both give the same
answers (greedy, EOS and stop strings cut alike) behind the same signature.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import torch

from ..errors import JRTArgumentError
from .batching import auto_batch_size, kv_bytes_per_token, plan_batches
from .engine import DecodeEngine
from .families import family_of, flatten
from .hf import greedy_transformers
from .result import Generation, finish, pad_token_id

PATHS = ("auto", "engine", "transformers")
MAX_BATCH_TOKENS = {"cuda": 1 << 20, "cpu": 1 << 16}  # padded prompt tokens per batch (transformers path)


def generate(
    model,
    tokenizer,
    prompts: str | Sequence[str],
    *,
    max_new_tokens: int = 48,
    stop: Sequence[str] | None = ("\n",),
    batch_size: int | None = None,
    supports_left_padding: bool | None = None,
    max_prompt_tokens: int | None = None,
    add_special_tokens: bool = False,
    path: str = "auto",
    max_batch_tokens: int | None = None,
) -> list[Generation]:
    """Greedy answers for ``prompts`` (one :class:`Generation` per prompt, in input order).

    model, tokenizer: any transformers causal LM and its tokenizer (e.g. from ``load_model`` or
        loaded by the caller with ``AutoModelForCausalLM``).
    stop: the answer ends before the first of these strings (default: a newline); None or () to
        stop only at EOS or ``max_new_tokens``.
    batch_size: prompts decoded together; by default picked from the free GPU memory (8 on CPU).
    supports_left_padding: whether the model masks left padding; by default inferred from the
        model type (transformers' RWKV does not). Rows that cannot share a padded prefill are
        prefilled apart (engine) or batched with equal lengths only (transformers' path).
    max_prompt_tokens: prompts longer than this raise an error naming the prompt.
    add_special_tokens: let the tokenizer add BOS/EOS markers around the prompt (off, as in the
        paper's harness; turn on for tokenizers that expect a BOS token).
    path: "auto" (the decode engine for constant-state models, else transformers' generate),
        "engine" (error if the model is not covered) or "transformers".
    max_batch_tokens: cap on a batch's padded prompt tokens (rows × longest prompt); the decode
        engine applies it to each prefill forward (its decode batches mix lengths freely).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if max_new_tokens < 1:
        raise JRTArgumentError(f"max_new_tokens={max_new_tokens} is invalid: generate at least one token")
    if batch_size is not None and batch_size < 1:
        raise JRTArgumentError(f"batch_size={batch_size} is invalid: use a positive batch size")
    if path not in PATHS:
        raise JRTArgumentError(f"path {path!r} is unknown: use one of {', '.join(PATHS)}")
    family = family_of(model) if path != "transformers" else None
    if path == "engine" and family is None:
        raise JRTArgumentError(
            f"the decode engine does not cover {type(model).__name__} (its state grows with the "
            "sequence or its family is unknown): use path='auto' or 'transformers'"
        )
    if supports_left_padding is None:
        supports_left_padding = getattr(model.config, "model_type", "") != "rwkv"
    pad_id = pad_token_id(tokenizer)
    encoded = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    for i, ids in enumerate(encoded):
        if not ids:
            raise JRTArgumentError(f"prompt {i} is empty: give every prompt some text")
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            raise JRTArgumentError(
                f"prompt {i} has {len(ids)} tokens, over the limit of {max_prompt_tokens}: shorten the context "
                "or fit it to a token budget (JRTPrompt.fit)"
            )
    if not encoded:
        return []
    device = next(model.parameters()).device
    results: list[Generation | None] = [None] * len(prompts)
    if family is not None:
        if not supports_left_padding and family.masks_padding:
            family = replace(family, masks_padding=False)
        engine = DecodeEngine(model, tokenizer, family, max_prefill_tokens=max_batch_tokens)
        if batch_size is None:
            batch_size = auto_batch_size(device, _engine_row_bytes(engine, encoded, pad_id))
        # A decode step costs the same whatever the prompt lengths: batches are filled in length
        # order, and the engine prefills each batch in groups of similar length.
        for batch in plan_batches([len(e) for e in encoded], batch_size, min_fill=0.0):
            gens = engine.generate_batch(
                [encoded[i] for i in batch],
                max_new_tokens=max_new_tokens,
                stop=stop,
                slots_limit=batch_size,
                pad_id=pad_id,
            )
            for i, gen in zip(batch, gens, strict=True):
                results[i] = gen
        return results  # type: ignore[return-value]

    if batch_size is None:
        longest = max(len(e) for e in encoded) + max_new_tokens
        hidden = getattr(model.config, "hidden_size", 1024) or 1024
        # KV cache, the prefill's activations (a few hidden-size vectors per token), last logits.
        per_row = (kv_bytes_per_token(model.config) + 32 * hidden) * longest + 8 * _vocab(model)
        batch_size = auto_batch_size(device, per_row)
    if getattr(model.config, "model_type", "") == "rwkv":
        # transformers' RWKV decodes a batch of more than one row wrongly (its one-token branch
        # mixes the rows' token shifts); the engine steps it correctly, this path one row at a time.
        batch_size = 1
    cap = max_batch_tokens or MAX_BATCH_TOKENS.get(device.type, 1 << 16)
    lengths = [len(e) for e in encoded]
    for batch in plan_batches(lengths, batch_size, max_tokens=cap, equal_lengths=not supports_left_padding):
        rows = [encoded[i] for i in batch]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, ids in enumerate(rows):
            input_ids[j, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[j, width - len(ids) :] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        started = time.perf_counter()
        output, finished_at = greedy_transformers(
            model, tokenizer, input_ids, attention_mask, max_new_tokens, stop, pad_id, started
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
        new = output[:, width:].tolist()
        for j, i in enumerate(batch):
            results[i] = finish(
                tokenizer,
                new[j],
                len(rows[j]),
                seconds,
                stop,
                max_new_tokens,
                row_seconds=finished_at.get(j, seconds),
            )
    return results  # type: ignore[return-value]


def generate_loaded(loaded, prompts: str | Sequence[str], **kwargs) -> list[Generation]:
    """:func:`generate` for a :class:`~jrt_prompt.models.loading.LoadedModel` (its model and
    tokenizer, and its adapter's word on left padding)."""
    kwargs.setdefault("supports_left_padding", loaded.adapter.supports_left_padding)
    return generate(loaded.model, loaded.tokenizer, prompts, **kwargs)


def _vocab(model) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and hasattr(head, "weight"):
        return int(head.weight.shape[0])
    return int(getattr(model.config, "vocab_size", 0) or 0)


def _engine_row_bytes(engine: DecodeEngine, encoded: list[list[int]], pad_id: int) -> int:
    """Device bytes one decode slot costs: its state (measured by prefilling one short prompt),
    its logits (fp32, twice for the argmax), and a margin for the step's activations."""
    if engine.device.type != "cuda":
        return 1
    probe = min(encoded, key=len)[:16]
    with torch.inference_mode():
        _, cache = engine.family.prefill(engine.model, torch.tensor([probe], device=engine.device), None)
        state = sum(t.numel() * t.element_size() for t in flatten(engine.family.tree(cache)))
    return int(state + 8 * _vocab(engine.model) + 64 * getattr(engine.model.config, "hidden_size", 1024) * 4)
