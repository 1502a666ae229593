"""Linear-attention kernels: Based (Taylor) attention, prefix linear attention and the decode step.

Each op runs a Triton kernel on CUDA tensors and the plain-PyTorch reference on CPU
(``JRT_KERNELS=reference|triton`` overrides the choice). Layout: ``[batch, seq, heads, dim]``.
"""

from .ops import backend_for, based_linear_attention, linear_attention_step, prefix_linear_attention
from .reference import taylor_feature_map
from .state import LinearAttentionState

__all__ = [
    "LinearAttentionState",
    "backend_for",
    "based_linear_attention",
    "linear_attention_step",
    "prefix_linear_attention",
    "taylor_feature_map",
]
