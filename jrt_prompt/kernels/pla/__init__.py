"""Prefix linear attention (PLA, the JRT-RNN mixer): a causal Based term plus a non-causal
encoder term with one shared normaliser.

- :mod:`.reference` — the plain-PyTorch statement of the math (quadratic and chunked forms);
- :mod:`.triton_prefill` — the encoder reduction and :func:`~.triton_prefill.pla_prefill`, both
  on Based's chunked Triton kernels;
- :mod:`.op` — the public op :func:`prefix_linear_attention` (checks, then kernels or reference).
"""

from .op import prefix_linear_attention

__all__ = ["prefix_linear_attention"]
