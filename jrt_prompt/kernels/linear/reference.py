"""The plain-PyTorch reference of :func:`jrt_prompt.kernels.linear.linear`: ``F.linear``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias``: x [..., in], weight [out, in], bias [out]."""
    return F.linear(x, weight, bias)
