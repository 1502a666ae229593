"""Greedy decoding through transformers' ``generate``: the path of every family the decode
engine does not cover (Transformers, unknown models)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from .result import stop_strings


class StopOnStrings:
    """transformers stopping criterion: a row stops once its generated text contains a stop
    string. Only rows still running are decoded, and the time each row finished is recorded."""

    def __init__(self, tokenizer, stop: Sequence[str], prompt_length: int, eos: int | None, started: float):
        self.tokenizer = tokenizer
        self.stop = stop_strings(stop)
        self.prompt_length = prompt_length
        self.eos = eos
        self.started = started
        self.done: torch.Tensor | None = None
        self.finished_at: dict[int, float] = {}

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        rows = input_ids.shape[0]
        if self.done is None:
            self.done = torch.zeros(rows, dtype=torch.bool)
        new = input_ids[:, self.prompt_length :].tolist()
        now = time.perf_counter() - self.started
        for row, ids in enumerate(new):
            if self.done[row]:
                continue
            hit = self.eos is not None and ids and ids[-1] == self.eos
            if not hit and self.stop:
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                hit = any(s in text for s in self.stop)
            if hit:
                self.done[row] = True
                self.finished_at[row] = now
        return self.done.to(input_ids.device)


def cache_keyword(model) -> str:
    """transformers 5.24 calls the cache argument ``cache``; earlier 5.x ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(out):
    """The cache of a model output (``cache`` in transformers 5.24, ``past_key_values`` before)."""
    for key in ("cache", "past_key_values"):
        value = out.get(key) if hasattr(out, "get") else None
        if value is not None:
            return value
    raise RuntimeError("the model returned no cache from a forward with use_cache=True")


def greedy_transformers(
    model,
    tokenizer,
    input_ids,
    attention_mask,
    max_new_tokens: int,
    stop,
    pad_id: int,
    started: float,
    past_key_values=None,
):
    """(generated ids [b, width + n], {row: seconds until that row finished}).

    past_key_values: a cache holding the keys and values of a prefix of ``input_ids`` (prefix
    reuse: only the rest of the prompt is read); it is extended in place."""
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
    criterion = StopOnStrings(tokenizer, stop or (), input_ids.shape[1], eos, started)
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=config,
            stopping_criteria=StoppingCriteriaList([criterion]),
            **({} if past_key_values is None else {cache_keyword(model): past_key_values}),
        )
    return out, criterion.finished_at
