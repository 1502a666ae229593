"""Which implementation an op runs: the one place that reads ``JRT_KERNELS``.

``JRT_KERNELS=reference`` forces the plain-PyTorch references everywhere; ``JRT_KERNELS=triton``
forces the Triton kernels (on CPU together with ``TRITON_INTERPRET=1``, for tests). Unset (or
``auto``): Triton for CUDA tensors, the reference otherwise.
"""

from __future__ import annotations

import os

import torch

from jrt_prompt.errors import JRTError


def kernel_choice() -> str:
    """'reference', 'triton' or 'auto', from ``JRT_KERNELS``."""
    choice = os.environ.get("JRT_KERNELS", "").strip().lower()
    if choice in ("reference", "ref", "torch"):
        return "reference"
    if choice == "triton":
        return "triton"
    if choice in ("", "auto"):
        return "auto"
    raise JRTError(f"JRT_KERNELS={choice!r} is not known; use 'reference', 'triton' or leave it unset")


def backend_for(t: torch.Tensor) -> str:
    """'triton' or 'reference' for a tensor, honouring ``JRT_KERNELS``."""
    choice = kernel_choice()
    if choice != "auto":
        return choice
    return "triton" if t.is_cuda else "reference"
