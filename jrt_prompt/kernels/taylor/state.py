"""The recurrent state shared by prefill and decode."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LinearAttentionState:
    """Running sums of a Taylor linear-attention layer, always fp32.

    kv:   [batch, heads, F, dv]  sum of phi(k) ⊗ v
    ksum: [batch, heads, F]      sum of phi(k) (the normaliser)
    with F = 1 + f + f*f (273 for feature dim 16).
    """

    kv: torch.Tensor
    ksum: torch.Tensor

    def clone(self) -> LinearAttentionState:
        return LinearAttentionState(self.kv.clone(), self.ksum.clone())

    def to(self, device) -> LinearAttentionState:
        return LinearAttentionState(self.kv.to(device), self.ksum.to(device))

    def index_select(self, rows: torch.Tensor) -> LinearAttentionState:
        """Keep the batch rows ``rows`` (beam / batch reordering during generation)."""
        return LinearAttentionState(self.kv.index_select(0, rows), self.ksum.index_select(0, rows))

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size() + self.ksum.numel() * self.ksum.element_size()
