"""Launch parameters of the Taylor kernels: the chunked prefill kernels (Based, PLA) and the decode step.

Plain dataclasses (no Triton import): benchmarks and tuners build them before any kernel compiles.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChunkConfig:
    """Launch parameters of the chunked kernel (tuned on an H200 by `jrt bench prefill --tune`)."""

    chunk: int = 64
    block_dv: int = 64
    num_warps: int = 4
    num_stages: int = 2
    segments: int = 0  # >1: cut the sequence into this many parallel segments; 0: pick from the shape
    maxnreg: int = 0  # >0: cap registers per thread (more programs per SM, more spills)
    # The kernels work on the f(f+1)/2 distinct quadratic features. Order of the pair features
    # i < j when f=16: "onehot" (_chunked_kernel: one [pairs, dv] tile, features by one-hot
    # selection products) or "cyclic" (_chunked_cyclic_kernel: eight [f, dv] tiles grouped by
    # cyclic distance, partners by a one-hot [f, f] product). Same results and states; "cyclic"
    # measured 5% faster on an H200 (docs/benchmarks.md). Other shapes run the one-hot kernel.
    pairs: str = "cyclic"
    # Half-precision inputs, cyclic kernel: take the normaliser's fp32 products as split bf16
    # products on the tensor cores (_split_dot) instead of fp32 products on the CUDA cores (3%
    # faster, 11% in the encoder pass; the one-hot kernel spills more with it and measured 1.9x
    # slower, so it keeps fp32 products). fp32 inputs always take exact fp32 products.
    split_normaliser: bool = True
    # >0: the normaliser runs as its own parallel pass (_normaliser_kernel, blocks of this many
    # tokens) and the prefill kernels only read its denominators; 0: the prefill kernels carry it
    # through their walk over the sequence (split_normaliser then applies).
    normaliser_block: int = 1024
    normaliser_warps: int = 1


PAIR_LAYOUTS = ("onehot", "cyclic")


# 3 pipeline stages for the chunk loads: tuned on an H200 with the normaliser pass (Based 32k x 16:
# 3.76 ms against 3.85 ms at 2 stages with the same pass; docs/benchmarks.md, eighth run)
DEFAULT_CONFIG = ChunkConfig(num_stages=3)


@dataclass(frozen=True)
class StepConfig:
    """Launch parameters of the decode-step kernel: pair rows per block, warps per program, and
    value-dimension blocks per (batch, head) (0: picked from the shape, see ``triton_step``)."""

    block_r: int = 32
    num_warps: int = 1
    dv_blocks: int = 0


DEFAULT_STEP_CONFIG = StepConfig()
