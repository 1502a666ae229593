"""Batched greedy decoding with left padding and stop strings, for any transformers causal LM.

Prompts are sorted by length and decoded in batches with transformers' ``generate`` (which keeps
each family's recurrent state or KV cache between steps). Left padding is masked by the models
that support it; for families that ignore the attention mask (``supports_left_padding=False``)
only prompts of equal token length share a batch, so a batched answer always equals the answer
the prompt gets alone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import JRTError


@dataclass(frozen=True)
class Generation:
    """One answer.

    text: the generated text, cut before the first stop string.
    prompt_tokens: tokens in the prompt.
    answer_tokens: tokens generated (up to the one that completed a stop string or EOS).
    seconds: wall time of the batch this prompt was decoded in (prefill + decode).
    finish_reason: "stop" (a stop string), "eos" (end-of-text token) or "length" (max_new_tokens).
    """

    text: str
    prompt_tokens: int
    answer_tokens: int
    seconds: float
    finish_reason: str


class _StopOnStrings:
    """Stops a row once its generated text contains one of the stop strings."""

    def __init__(self, tokenizer, stop: Sequence[str], prompt_length: int):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if not self.stop:
            return done
        new = input_ids[:, self.prompt_length :].tolist()
        for row, ids in enumerate(new):
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            done[row] = any(s in text for s in self.stop)
        return done


def generate(
    model,
    tokenizer,
    prompts: str | Sequence[str],
    *,
    max_new_tokens: int = 48,
    stop: Sequence[str] | None = ("\n",),
    batch_size: int = 8,
    supports_left_padding: bool | None = None,
    max_prompt_tokens: int | None = None,
    add_special_tokens: bool = False,
) -> list[Generation]:
    """Greedy answers for ``prompts`` (one :class:`Generation` per prompt, in input order).

    model, tokenizer: any transformers causal LM and its tokenizer (e.g. from ``load_model`` or
        loaded by the caller with ``AutoModelForCausalLM``).
    stop: the answer ends before the first of these strings (default: a newline); None or () to
        stop only at EOS or ``max_new_tokens``.
    supports_left_padding: whether the model masks left padding; by default inferred from the
        model type (transformers' RWKV does not).
    max_prompt_tokens: prompts longer than this raise an error naming the prompt.
    add_special_tokens: let the tokenizer add BOS/EOS markers around the prompt (off, as in the
        paper's harness; turn on for tokenizers that expect a BOS token).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if max_new_tokens < 1:
        raise JRTError(f"max_new_tokens={max_new_tokens} is invalid: generate at least one token")
    if batch_size < 1:
        raise JRTError(f"batch_size={batch_size} is invalid: use a positive batch size")
    if supports_left_padding is None:
        supports_left_padding = getattr(model.config, "model_type", "") != "rwkv"
    pad_id = _pad_token_id(tokenizer)
    encoded = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    for i, ids in enumerate(encoded):
        if not ids:
            raise JRTError(f"prompt {i} is empty: give every prompt some text")
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            raise JRTError(
                f"prompt {i} has {len(ids)} tokens, over the limit of {max_prompt_tokens}: shorten the context "
                "or fit it to a token budget (JRTPrompt.fit)"
            )
    device = next(model.parameters()).device
    results: list[Generation | None] = [None] * len(prompts)
    for batch in _batches(encoded, batch_size, supports_left_padding):
        rows = [encoded[i] for i in batch]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, ids in enumerate(rows):
            input_ids[j, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[j, width - len(ids) :] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        started = time.perf_counter()
        output = _greedy(model, tokenizer, input_ids, attention_mask, max_new_tokens, stop, pad_id)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
        for j, i in enumerate(batch):
            results[i] = _finish(
                tokenizer, output[j, width:].tolist(), len(rows[j]), seconds, stop, max_new_tokens
            )
    return results  # type: ignore[return-value]


def _greedy(model, tokenizer, input_ids, attention_mask, max_new_tokens, stop, pad_id):
    from transformers import GenerationConfig, StoppingCriteriaList

    eos = tokenizer.eos_token_id
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_id,
        eos_token_id=eos,
        bos_token_id=getattr(model.config, "bos_token_id", None),
    )
    criteria = StoppingCriteriaList([_StopOnStrings(tokenizer, stop or (), input_ids.shape[1])])
    with torch.inference_mode():
        return model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=config,
            stopping_criteria=criteria,
        )


def _finish(
    tokenizer, new_ids: list[int], prompt_tokens: int, seconds: float, stop, max_new_tokens
) -> Generation:
    eos = tokenizer.eos_token_id
    reason = "length"
    if eos is not None and eos in new_ids:
        new_ids = new_ids[: new_ids.index(eos) + 1]
        reason = "eos"
    text = tokenizer.decode(new_ids, skip_special_tokens=True)
    # The answer ends at the earliest stop string; count the tokens needed to produce it.
    cut = min((text.find(s) for s in (stop or ()) if s and s in text), default=-1)
    if cut >= 0:
        text = text[:cut]
        reason = "stop"
        for n in range(1, len(new_ids) + 1):
            if len(tokenizer.decode(new_ids[:n], skip_special_tokens=True)) > cut:
                new_ids = new_ids[:n]
                break
    elif reason == "length" and len(new_ids) < max_new_tokens:
        reason = "eos"  # rows finished early are padded; the model ended them
    return Generation(text, prompt_tokens, len(new_ids), seconds, reason)


def _pad_token_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    raise JRTError(
        "the tokenizer has neither a pad nor an EOS token: set tokenizer.pad_token before generating"
    )


def _batches(encoded: list[list[int]], batch_size: int, mixed_lengths: bool) -> list[list[int]]:
    """Indices grouped into batches, longest prompts first; equal lengths only when padding is unsafe."""
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
    batches: list[list[int]] = []
    for i in order:
        last = batches[-1] if batches else None
        if (
            last is not None
            and len(last) < batch_size
            and (mixed_lengths or len(encoded[last[0]]) == len(encoded[i]))
        ):
            last.append(i)
        else:
            batches.append([i])
    return batches


def generate_like_harness(loaded, prompts: list[str], *, max_new_tokens: int = 48, batch_size: int = 8):
    """Answers as the paper's evaluation harness produced them (reference inference mode).

    ``loaded`` is a :class:`~jrt_prompt.models.loading.LoadedModel`; see docs/inference_modes.md.
    """
    from .models.hazy_reference import harness_generate

    if hasattr(loaded.model, "set_inference_mode"):
        loaded.model.set_inference_mode("reference")
    started = time.perf_counter()
    texts = harness_generate(
        loaded.model, loaded.tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens
    )
    seconds = time.perf_counter() - started
    out = []
    for prompt, text in zip(prompts, texts, strict=True):
        n_prompt = len(loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        # The harness always decodes max_new_tokens tokens and cuts the text at the first newline.
        out.append(Generation(text, n_prompt, max_new_tokens, seconds, "reference"))
    return out
