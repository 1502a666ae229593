"""Taylor linear attention: what the Based and PLA op families share.

- :mod:`.state` — :class:`LinearAttentionState`, the fp32 running sums prefill returns and decode
  updates;
- :mod:`.reference` — the Taylor feature map, state sums and the decode step in plain PyTorch;
- :mod:`.op` — the public decode step :func:`linear_attention_step`, and the input checks every
  Taylor op shares;
- :mod:`.config` — launch parameters of the chunked prefill kernels and of the decode-step kernel;
- :mod:`.triton_common` — Triton helpers of the chunked walks and of their launchers;
- :mod:`.triton_step` — the fused decode-step kernel.
"""

from .op import linear_attention_step
from .reference import taylor_feature_map
from .state import LinearAttentionState

__all__ = ["LinearAttentionState", "linear_attention_step", "taylor_feature_map"]
