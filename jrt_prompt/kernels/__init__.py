"""Linear-attention kernels: Based (Taylor) attention, prefix linear attention and the decode step.

Each op runs a Triton kernel on CUDA tensors and the plain-PyTorch reference on CPU
(``JRT_KERNELS=reference|triton`` overrides the choice, in :mod:`.dispatch`). Layout:
``[batch, seq, heads, dim]``. One folder per op family, each with its reference, its Triton code
and its public op:

- :mod:`.based` — causal Based linear attention (:func:`based_linear_attention`);
- :mod:`.pla` — prefix linear attention, the JRT-RNN mixer (:func:`prefix_linear_attention`);
- :mod:`.taylor` — what both share: the Taylor feature map, :class:`LinearAttentionState`, the
  recurrent decode step (:func:`linear_attention_step`), launch configurations and Triton helpers.
- :mod:`.ssd` — Mamba-2's chunked SSD scan and its one-token step (``ssd_chunk_scan``,
  ``ssd_state_update``, with transformers' argument names; see docs/kernels_ssd.md);
- :mod:`.mamba` — Mamba-1's selective scan and causal conv1d with their one-token updates;
- :mod:`.norm`, :mod:`.stack` — the decode step's normalisations and the JRT stack's small
  element-wise ops, one launch each;
- :mod:`.linear` — a linear layer on one row (a batch-1 decode step's projections).

Triton is imported only when a kernel runs.
"""

from .based import based_linear_attention
from .dispatch import backend_for
from .pla import prefix_linear_attention
from .taylor import LinearAttentionState, linear_attention_step, taylor_feature_map

__all__ = [
    "LinearAttentionState",
    "backend_for",
    "based_linear_attention",
    "linear_attention_step",
    "prefix_linear_attention",
    "taylor_feature_map",
]
