"""Batches that do not waste work: sorted by length, capped in padded tokens, sized to memory.

Prompts are taken longest first. A batch closes when it is full, when its padded tokens (rows ×
longest row) would pass the token cap, or when the next prompt is less than half as long as the
batch's longest one (so a short prompt is never padded up to a huge one). Families whose models
ignore the attention mask batch equal lengths only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import JRTArgumentError

CPU_BATCH_SIZE = 8  # batch size on CPU when the caller sets none
MAX_AUTO_BATCH = 128  # largest batch picked from free GPU memory
MEMORY_SHARE = 0.6  # share of the free GPU memory a batch may fill with its states / KV cache
MIN_FILL = 0.5  # a prompt shorter than this share of the batch's longest starts a new batch


def plan_batches(
    lengths: Sequence[int],
    batch_size: int,
    *,
    max_tokens: int | None = None,
    equal_lengths: bool = False,
    min_fill: float = MIN_FILL,
) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches, longest first (ties in input order).

    max_tokens: cap on rows × longest row of a batch (a single longer row still gets a batch).
    equal_lengths: only prompts of equal length share a batch.
    """
    if batch_size < 1:
        raise JRTArgumentError(f"batch_size={batch_size} is invalid: use a positive batch size")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        last = batches[-1] if batches else None
        if last is not None:
            width = lengths[last[0]]
            fits = len(last) < batch_size
            if max_tokens is not None:
                fits = fits and (len(last) + 1) * width <= max_tokens
            if equal_lengths:
                fits = fits and lengths[i] == width
            else:
                fits = fits and lengths[i] >= min_fill * width
            if fits:
                last.append(i)
                continue
        batches.append([i])
    return batches


def free_device_bytes(device: torch.device) -> int | None:
    """Bytes a new allocation can use on a CUDA device (free memory plus the allocator's cached
    blocks), or None on other devices."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + max(cached, 0))


def auto_batch_size(device: torch.device, bytes_per_row: int, *, limit: int = MAX_AUTO_BATCH) -> int:
    """The batch size when the caller sets none: a fixed default on CPU; on a GPU the largest
    power of two whose rows (``bytes_per_row`` each: state or KV cache, logits, activations) fit
    in a share of the free memory, between 1 and ``limit``."""
    free = free_device_bytes(device)
    if free is None:
        return CPU_BATCH_SIZE
    rows = int(free * MEMORY_SHARE) // max(int(bytes_per_row), 1)
    size = 1
    while size * 2 <= min(rows, limit):
        size *= 2
    return size


def kv_bytes_per_token(config) -> int:
    """Bytes of KV cache one token costs a Transformer (2 × layers × kv heads × head dim × dtype),
    from its config; 0 when the config does not describe attention."""
    layers = getattr(config, "num_hidden_layers", None)
    hidden = getattr(config, "hidden_size", None)
    heads = getattr(config, "num_attention_heads", None)
    if not (layers and hidden and heads):
        return 0
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    size = 2 if dtype in (torch.float16, torch.bfloat16, "float16", "bfloat16") else 4
    return 2 * layers * kv_heads * head_dim * size
