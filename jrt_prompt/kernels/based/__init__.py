"""Causal Based (Taylor) linear attention.

- :mod:`.reference` — the plain-PyTorch statement of the math (quadratic and chunked forms);
- :mod:`.triton_prefill` — the chunked Triton prefill kernels (cyclic and one-hot pair layouts)
  and their launcher :func:`~.triton_prefill.based_prefill`;
- :mod:`.triton_normaliser` — the normaliser's own Triton pass;
- :mod:`.op` — the public op :func:`based_linear_attention` (checks, then kernel or reference).
"""

from .op import based_linear_attention

__all__ = ["based_linear_attention"]
