"""Nested lists / dicts / tuples of tensors (a cache's state as the decode engine sees it):
flattened to their tensors in order, and rebuilt around other tensors."""

from __future__ import annotations

import dataclasses

import torch

from ..kernels import LinearAttentionState


def flatten(tree) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    _flatten(tree, out)
    return out


def _flatten(node, out: list) -> None:
    if isinstance(node, torch.Tensor):
        out.append(node)
    elif isinstance(node, dict):
        for value in node.values():
            _flatten(value, out)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _flatten(value, out)
    elif isinstance(node, LinearAttentionState):
        out.extend([node.kv, node.ksum])


def unflatten(tree, leaves: list[torch.Tensor]):
    """``tree`` with its tensors replaced, in order, by ``leaves`` (lists and dicts are rebuilt,
    not mutated)."""
    it = iter(leaves)
    out = _rebuild(tree, it)
    if next(it, None) is not None:
        raise ValueError("more state tensors than the cache holds")
    return out


def _rebuild(node, it):
    if isinstance(node, torch.Tensor):
        return next(it)
    if isinstance(node, dict):
        return {key: _rebuild(value, it) for key, value in node.items()}
    if isinstance(node, list):
        return [_rebuild(value, it) for value in node]
    if isinstance(node, tuple):
        return tuple(_rebuild(value, it) for value in node)
    if isinstance(node, LinearAttentionState):
        return dataclasses.replace(node, kv=next(it), ksum=next(it))
    return node
