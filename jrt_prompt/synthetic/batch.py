"""A batch of token sequences with scored answer positions, shared by every synthetic task."""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100


@dataclass
class TokenBatch:
    """Token sequences and what the model must predict where.

    input_ids: [b, l] tokens (right-padded with ``pad_id``).
    targets: [b, l] the token the model must predict *at* each position (its next token), or
        ``IGNORE`` where nothing is scored. Targets are aligned with the logits, not shifted.
    groups: [b, l] answer id of each scored position (``-1`` elsewhere). An answer counts as
        correct when every position of its group is predicted correctly, so a multi-token answer
        (a word of bytes, a run of membership marks) is scored as a whole.
    """

    input_ids: torch.Tensor
    targets: torch.Tensor
    groups: torch.Tensor

    def to(self, device) -> TokenBatch:
        return TokenBatch(self.input_ids.to(device), self.targets.to(device), self.groups.to(device))

    @property
    def num_answers(self) -> int:
        return int(self.groups.max().item()) + 1 if self.groups.numel() else 0


def stack_rows(rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], pad_id: int) -> TokenBatch:
    """Right-pad rows of (ids, targets, local groups) into one batch; groups become batch-unique."""
    length = max(r[0].numel() for r in rows)
    b = len(rows)
    ids = torch.full((b, length), pad_id, dtype=torch.long)
    tgt = torch.full((b, length), IGNORE, dtype=torch.long)
    grp = torch.full((b, length), -1, dtype=torch.long)
    offset = 0
    for i, (r_ids, r_tgt, r_grp) in enumerate(rows):
        n = r_ids.numel()
        ids[i, :n] = r_ids
        tgt[i, :n] = r_tgt
        scored = r_grp >= 0
        grp[i, :n] = torch.where(scored, r_grp + offset, r_grp)
        if scored.any():
            offset += int(r_grp.max().item()) + 1
    return TokenBatch(ids, tgt, grp)


def pad_right_cat(parts: list[TokenBatch], pad_id: int) -> TokenBatch:
    """Fast join of batches (vectorised): pad each to the longest, then concatenate rows."""
    length = max(p.input_ids.shape[1] for p in parts)
    ids, tgt, grp = [], [], []
    offset = 0
    for p in parts:
        extra = length - p.input_ids.shape[1]
        ids.append(torch.nn.functional.pad(p.input_ids, (0, extra), value=pad_id))
        tgt.append(torch.nn.functional.pad(p.targets, (0, extra), value=IGNORE))
        g = torch.nn.functional.pad(p.groups, (0, extra), value=-1)
        grp.append(torch.where(g >= 0, g + offset, g))
        offset += p.num_answers
    return TokenBatch(torch.cat(ids), torch.cat(tgt), torch.cat(grp))
