"""``mode="reference"``: generation as the paper's evaluation harness did it, to match its numbers.

The harness (lm-eval's ``generate_until`` with the hazyresearch model wrappers) differs from this
project's default generation in ways that change greedy answers; :func:`harness_generate`
reproduces them (docs/inference_modes.md lists each with its source):

* prompts are tokenized without special tokens, left-truncated to ``max_length - max_new_tokens``
  (2000) tokens, sorted by descending token length (ties by text) and batched in that order;
* a batch is left-padded with token 220 (``' '``) and the padding is **not masked**, so answers
  depend on the batch size and on the other prompts of the batch;
* JRT-RNN only: a batch shorter than ``enc_length`` (1024) is padded further on the left to
  exactly 1024 tokens; those added tokens (only those) have their prefix-linear-attention keys
  zeroed, and the whole 1024-token prefill is the encoder region;
* GPT-style models run under bf16 autocast (linear-attention states rounded to bf16, Based's
  decode adds ``φ(k)⊗v`` twice: ``JRTForCausalLM``'s reference inference mode); Mamba runs in fp32;
* exactly ``max_new_tokens`` (48) greedy tokens over the whole padded vocabulary, no EOS stop;
  the continuation is decoded without skipping special tokens and cut at the first newline.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

import torch

from ..errors import JRTError
from .engine import DecodeEngine
from .families import HF_SSM, HF_SSM_FUSED, family_of, pad_windows
from .result import Generation

HARNESS_PAD_TOKEN_ID = 220
HARNESS_ENC_LENGTH = 1024
HARNESS_MAX_LENGTH = 2048
HARNESS_MAX_NEW_TOKENS = 48


def harness_generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    batch_size: int = 8,
    max_new_tokens: int = HARNESS_MAX_NEW_TOKENS,
    until: str = "\n",
    pad_token_id: int = HARNESS_PAD_TOKEN_ID,
    enc_length: int = HARNESS_ENC_LENGTH,
    max_length: int = HARNESS_MAX_LENGTH,
    jrt_padding: bool | None = None,
    bf16_autocast: bool | None = None,
) -> list[str]:
    """The harness's prediction string for each prompt, in input order.

    jrt_padding: pad to ``enc_length`` with the partial mask (default: the model has prefix
        linear attention, as the harness decided from the model name).
    bf16_autocast: run under bf16 autocast (default: for JRTForCausalLM models; the harness ran
        Mamba in fp32).
    """
    if batch_size < 1:
        raise JRTError(f"batch_size={batch_size} is invalid: use a positive batch size")
    if max_new_tokens < 1 or max_new_tokens >= max_length:
        raise JRTError(f"max_new_tokens={max_new_tokens} must be between 1 and max_length {max_length}")
    from ..models.modeling_jrt import JRTForCausalLM  # imported on use: it loads the kernels

    is_hybrid = isinstance(model, JRTForCausalLM)
    if jrt_padding is None:
        jrt_padding = is_hybrid and "prefix_linear" in model.config.layer_mixers
    if bf16_autocast is None:
        bf16_autocast = is_hybrid
    budget = max_length - max_new_tokens
    encoded = []
    for i, prompt in enumerate(prompts):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise JRTError(f"prompt {i} is empty: give every prompt some text")
        encoded.append(ids[-budget:])
    order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), prompts[i]))
    device = next(model.parameters()).device
    results: list[str | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
        harness_mask = None
        if jrt_padding and width < enc_length:
            extra = enc_length - width
            ids = torch.cat([torch.full((len(batch), extra), pad_token_id, dtype=torch.long), ids], dim=1)
            harness_mask = torch.ones_like(ids, dtype=torch.bool)
            harness_mask[:, :extra] = False
        ids = ids.to(device)
        harness_mask = None if harness_mask is None else harness_mask.to(device)
        autocast = (
            torch.autocast(device_type=device.type, dtype=torch.bfloat16)
            if bf16_autocast
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            if is_hybrid:
                new_tokens = _greedy_hybrid(model, ids, harness_mask, max_new_tokens)
            else:
                new_tokens = _greedy_generic(model, ids, max_new_tokens, pad_token_id)
        for row, i in enumerate(batch):
            text = tokenizer.decode(new_tokens[row].tolist(), skip_special_tokens=False)
            results[i] = text.split(until)[0] if until else text
    return results  # type: ignore[return-value]


def _greedy_hybrid(model, ids, harness_mask, max_new_tokens: int) -> torch.Tensor:
    from ..models.modeling_jrt import output_cache

    previous = model.config.inference_mode
    model.set_inference_mode("reference")
    try:
        family = family_of(model)
        if family is not None:
            # The decode engine (a CUDA graph on a GPU) runs the very same step from the same state.
            def prefill():
                out = model(ids, use_cache=True, logits_to_keep=1, harness_pad_mask=harness_mask)
                return out.logits[:, -1], pad_windows(model, output_cache(out))

            engine = DecodeEngine(model, None, family)
            return engine.greedy_ids(ids, max_new_tokens, prefill=prefill)[0]
        out = model(ids, use_cache=True, logits_to_keep=1, harness_pad_mask=harness_mask)
        cache = output_cache(out)
        tokens = [out.logits[:, -1].argmax(-1)]
        for _ in range(max_new_tokens - 1):
            out = model(tokens[-1][:, None], past_key_values=cache, use_cache=True)
            cache = output_cache(out)
            tokens.append(out.logits[:, -1].argmax(-1))
    finally:
        model.set_inference_mode(previous)
    return torch.stack(tokens, dim=1).cpu()


def _greedy_generic(model, ids, max_new_tokens: int, pad_token_id: int) -> torch.Tensor:
    """Any transformers causal LM (the harness's Mamba path): unmasked padding, no EOS stop."""
    from transformers import GenerationConfig

    family = family_of(model)
    if family is HF_SSM_FUSED:
        # The harness mode keeps transformers' own step (its numbers to the bit); the written-out
        # step agrees only to rounding on a GPU, where its norms are Triton kernels.
        family = HF_SSM
    if family is not None and family.masks_padding:
        # An all-ones mask multiplies every position by one: the same as no mask, so the decode
        # engine reproduces transformers' generate here (no EOS stop either).
        return DecodeEngine(model, None, family).greedy_ids(ids, max_new_tokens)[0]

    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None
    try:
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=None,
            pad_token_id=pad_token_id,
        )
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    finally:
        model.generation_config.eos_token_id = saved
    return out[:, ids.shape[1] :].cpu()


def generate_like_harness(loaded, prompts: list[str], *, max_new_tokens: int = 48, batch_size: int = 8):
    """Answers (:class:`Generation`) as the paper's evaluation harness produced them.

    ``loaded`` is a :class:`~jrt_prompt.models.loading.LoadedModel`; see docs/inference_modes.md.
    """
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
