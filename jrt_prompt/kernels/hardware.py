"""What the kernels' launch planners read of the device they run on."""

from __future__ import annotations

import functools

import torch

# Under the Triton interpreter (CPU tensors) the planners still need a count: a small GPU's, so
# that the split paths (several programs per batch row) are exercised by the CPU tests.
CPU_MULTIPROCESSORS = 4


@functools.cache
def _cuda_multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def multiprocessor_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (a CUDA GPU), or ``CPU_MULTIPROCESSORS`` elsewhere."""
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_MULTIPROCESSORS
    return _cuda_multiprocessors(device.index if device.index is not None else torch.cuda.current_device())
