"""The public Based op: check the inputs, then run the Triton kernel or the reference.

Which one runs is decided in :mod:`jrt_prompt.kernels.dispatch` (``JRT_KERNELS``).
"""

from __future__ import annotations

import torch

from ..dispatch import backend_for
from ..taylor.op import _QUADRATIC_MAX_LEN, _check_mask, _check_qkv, _check_state
from ..taylor.state import LinearAttentionState
from . import reference


def based_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    eps: float = 1e-12,
    initial_state: LinearAttentionState | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, LinearAttentionState | None]:
    """Causal Based (Taylor) linear attention over [b, l, h, f] queries/keys and [b, l, h, dv] values.

    Returns the output in v's dtype and, if asked, the fp32 state after the last token.
    """
    _check_qkv(q, k, v)
    b, n, h, f = q.shape
    mask = _check_mask(mask, b, n, q.device)
    if initial_state is not None:
        _check_state(initial_state, b, h, f, v.shape[-1], q.device)
    if backend_for(q) == "triton":
        from . import triton_prefill

        return triton_prefill.based_prefill(
            q, k, v, mask=mask, eps=eps, initial_state=initial_state, output_final_state=output_final_state
        )
    fn = reference.based_quadratic if n <= _QUADRATIC_MAX_LEN else reference.based_chunked
    return fn(q, k, v, mask=mask, eps=eps, initial_state=initial_state, output_final_state=output_final_state)
