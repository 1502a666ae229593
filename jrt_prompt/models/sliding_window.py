"""Sliding-window softmax attention without an N×N mask.

A query at position i sees the keys at positions i - window, ..., i (``window`` earlier tokens and
itself). Three implementations of the same math, layout ``[batch, seq, heads, head_dim]``:

* :func:`sliding_window_attention_masked`: the plain one, one softmax over all keys with an
  N×N band mask. Memory grows with N²; it is the reference the others are tested against (and
  the ``JRT_STACK=legacy`` path of the model).
* :func:`sliding_window_attention_blocks`: queries in blocks of ``block ≥ window`` positions;
  each block attends to its own and the previous key block (2·block keys) with a small band mask,
  through ``F.scaled_dot_product_attention`` (on CUDA its memory-efficient kernel). Memory and
  work grow linearly with N. Exact (same softmax, fewer masked-out keys); the default.
* :func:`sliding_window_attention_flex`: torch's ``flex_attention`` with a sliding-window block
  mask, compiled on CUDA (``JRT_SWA=flex``).

``valid`` ([batch, seq] bool, True = real token) removes padded keys; a query always sees itself,
so no softmax row is empty (padded queries give finite outputs that the model ignores).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEFAULT_MIN_BLOCK = 64


def sliding_window_attention_masked(q, k, v, window: int | None, valid=None, *, scale: float):
    """Reference: q, k, v [b, l, h, hd] -> [b, l, h, hd]; ``window=None`` means full causal attention."""
    b, l = q.shape[:2]
    idx = torch.arange(l, device=q.device)
    allowed = idx[None, :] <= idx[:, None]
    if window is not None:
        allowed = allowed & (idx[:, None] - idx[None, :] <= window)
    allowed = allowed[None].expand(b, l, l)
    if valid is not None:
        allowed = allowed & (valid[:, None, :] | torch.eye(l, dtype=torch.bool, device=q.device))
    o = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed[:, None], scale=scale
    )
    return o.transpose(1, 2)


def block_size_for(window: int, block: int | None = None) -> int:
    """Query block of the blocked implementation: at least ``window`` (so the previous block holds
    every key a query needs) and at least ``DEFAULT_MIN_BLOCK`` (fewer, larger SDPA batches)."""
    if block is None:
        block = max(window, DEFAULT_MIN_BLOCK)
    if block < max(window, 1):
        raise ValueError(f"block {block} is smaller than the window {window}; use block >= window")
    return block


def window_block_mask(l: int, window: int, block: int, valid=None, device=None, dtype=None) -> torch.Tensor:
    """The mask of :func:`sliding_window_attention_blocks`: [b·nb or nb, 1, block, 2·block].

    Row r of query block n is position n·block + r; column c is key position (n - 1)·block + c.
    Without ``valid`` the mask has one entry per block (broadcast over the batch by the caller).
    Boolean (True = attend), or with a floating ``dtype`` the additive form (0 or -inf) that
    SDPA's kernels read directly.
    """
    nb = math.ceil(l / block)
    r = torch.arange(block, device=device)[:, None]
    c = torch.arange(2 * block, device=device)[None, :]
    distance = r + block - c  # query position - key position
    band = (distance >= 0) & (distance <= window)  # [block, 2·block]
    allowed = band[None].repeat(nb, 1, 1)
    allowed[0, :, :block] = False  # block 0 has no previous block (its slots are zero padding)
    if valid is None:
        allowed = allowed[:, None]
    else:
        b = valid.shape[0]
        padded = F.pad(valid, (block, nb * block - l), value=False).view(b, nb + 1, block)
        keys_valid = torch.cat([padded[:, :-1], padded[:, 1:]], dim=2)  # [b, nb, 2·block]
        allowed = allowed[None] & (keys_valid[:, :, None, :] | (distance == 0))
        allowed = allowed.reshape(b * nb, 1, block, 2 * block)
    if dtype is None or dtype == torch.bool:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, float("-inf"))


def _key_windows(x: torch.Tensor, block: int, nb: int) -> torch.Tensor:
    """[b, l, h, hd] -> [b·nb, h, 2·block, hd]: for block n the keys of blocks n - 1 and n.

    The windows overlap in memory (one padded copy of the keys, viewed with strides); at batch 1
    nothing else is copied.
    """
    b, l, h, hd = x.shape
    padded = F.pad(x, (0, 0, 0, 0, block, nb * block - l))  # [b, (nb + 1)·block, h, hd], contiguous
    sb, st, sh, sd = padded.stride()
    windows = padded.as_strided((b, nb, h, 2 * block, hd), (sb, block * st, sh, st, sd))
    return windows.reshape(b * nb, h, 2 * block, hd)


def sliding_window_attention_blocks(
    q,
    k,
    v,
    window: int,
    valid=None,
    *,
    scale: float,
    block: int | None = None,
    mask: torch.Tensor | None = None,
):
    """q, k, v [b, l, h, hd] -> [b, l, h, hd], exact sliding-window attention in O(l · block).

    mask: a precomputed :func:`window_block_mask` for these arguments (shared by every layer of a
    forward call); built here when None.
    """
    b, l, h, hd = q.shape
    block = block_size_for(window, block)
    nb = math.ceil(l / block)
    if mask is None:
        mask = window_block_mask(l, window, block, valid, device=q.device)
    if mask.shape[0] != b * nb:
        mask = mask[None].expand(b, *mask.shape).reshape(b * nb, *mask.shape[1:])
    qb = q if nb * block == l else F.pad(q, (0, 0, 0, 0, 0, nb * block - l))
    qb = qb.reshape(b, nb, block, h, hd)
    qb = qb.permute(0, 1, 3, 2, 4).reshape(b * nb, h, block, hd)
    o = F.scaled_dot_product_attention(
        qb, _key_windows(k, block, nb), _key_windows(v, block, nb), attn_mask=mask, scale=scale
    )
    o = o.view(b, nb, h, block, hd).permute(0, 1, 3, 2, 4).reshape(b, nb * block, h, hd)
    return o[:, :l]


_FLEX = {}


def _flex_fns(device_type: str):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if device_type != "cuda":
        return flex_attention, create_block_mask, False
    if "flex" not in _FLEX:
        _FLEX["flex"] = torch.compile(flex_attention, dynamic=False)
    return _FLEX["flex"], create_block_mask, True


def flex_window_mask(l: int, window: int, valid=None, device=None):
    """The ``flex_attention`` block mask of a sliding window (and padded keys when ``valid``)."""
    _, create_block_mask, compiled = _flex_fns(torch.device(device).type if device is not None else "cpu")

    if valid is None:

        def mask_mod(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx) & (q_idx - kv_idx <= window)

        batch = None
    else:

        def mask_mod(b, h, q_idx, kv_idx):
            band = (kv_idx <= q_idx) & (q_idx - kv_idx <= window)
            return band & (valid[b, kv_idx] | (q_idx == kv_idx))

        batch = valid.shape[0]
    return create_block_mask(mask_mod, batch, None, l, l, device=device, _compile=compiled)


def sliding_window_attention_flex(q, k, v, window: int, valid=None, *, scale: float, block_mask=None):
    """q, k, v [b, l, h, hd] -> [b, l, h, hd] through ``flex_attention`` (compiled on CUDA)."""
    flex, _, _ = _flex_fns(q.device.type)
    if block_mask is None:
        block_mask = flex_window_mask(q.shape[1], window, valid, device=q.device)
    o = flex(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask, scale=scale)
    return o.transpose(1, 2)
