"""Prefix linear attention (JRT-RNN) on Based's Triton kernels: encoder reduction, then causal pass.

PLA runs the chunked kernel of :mod:`jrt_prompt.kernels.based.triton_prefill` twice: first as a
pure reduction over the encoder tokens (parallel over token splits, partial states summed), then
as the causal pass starting from that encoder state — which is exactly the cross term of PLA with
its shared normaliser. The causal pass's normaliser needs only the encoder's normaliser, so on a
GPU the encoder reduction runs on a side stream beside the normaliser passes (from
SIDE_STREAM_MIN_TOKENS). Reference: :mod:`.reference`; measured figures: docs/benchmarks.md.
"""

from __future__ import annotations

import torch
import triton

from ..based.triton_normaliser import _causal_normaliser, _normaliser_pass
from ..based.triton_prefill import _partial_states, based_prefill
from ..hardware import multiprocessor_count
from ..taylor.config import DEFAULT_CONFIG, ChunkConfig
from ..taylor.state import LinearAttentionState
from ..taylor.triton_common import _split_plan, supports
from . import reference

# PLA's encoder reduction has no queries and no [chunk, chunk] scores, so it takes a larger chunk
# (tuned separately: `jrt bench prefill --tune`, docs/benchmarks.md)
DEFAULT_ENCODER_CONFIG = ChunkConfig(chunk=128, num_stages=3)


def encoder_state(
    k_enc, v_enc, *, enc_lengths, mask=None, config: ChunkConfig | None = None
) -> LinearAttentionState:
    """Sum of phi(k_enc) ⊗ v_enc over encoder positions, parallel over token splits."""
    config = config or DEFAULT_ENCODER_CONFIG
    k_enc, v_enc = k_enc.contiguous(), v_enc.contiguous()
    mask_u8 = mask.to(torch.uint8).contiguous() if mask is not None else None
    enc_len = enc_lengths.to(torch.int32).contiguous()
    if config.normaliser_block <= 0:
        return _encoder_kv(k_enc, v_enc, mask_u8=mask_u8, enc_len=enc_len, config=config)
    ksum = _encoder_ksum(k_enc, mask_u8=mask_u8, enc_len=enc_len, config=config)
    return LinearAttentionState(
        _encoder_kv(k_enc, v_enc, mask_u8=mask_u8, enc_len=enc_len, config=config).kv, ksum
    )


def _encoder_ksum(k_enc, *, mask_u8, enc_len, config: ChunkConfig):
    """The encoder's normaliser (sum of phi(k_enc)) by the normaliser pass."""
    # fmt: off
    return _normaliser_pass(k_enc, k_enc, mask_u8=mask_u8, enc_len=enc_len, init_ksum=None,
                            block=config.normaliser_block, want_den=False, num_warps=config.normaliser_warps)[1]


    # fmt: on


def _encoder_kv(k_enc, v_enc, *, mask_u8, enc_len, config: ChunkConfig) -> LinearAttentionState:
    """The encoder reduction: kv (and, with the inline normaliser, ksum; else ksum is None)."""
    b, n, h, f = k_enc.shape
    dv = v_enc.shape[-1]
    block_dv = min(config.block_dv, max(16, triton.next_power_of_2(dv)))
    programs = triton.cdiv(dv, block_dv) * b * h
    # Enough programs to fill the GPU several times over, but at least ~1k tokens each.
    want = max(1, min(triton.cdiv(n, 1024), triton.cdiv(8 * multiprocessor_count(k_enc.device), programs)))
    splits, tokens_per_split = _split_plan(n, want, config.chunk)
    inline = config.normaliser_block <= 0
    kv_parts, ks_parts = _partial_states(
        k_enc,
        v_enc,
        mask_u8=mask_u8,
        enc_len=enc_len,
        splits=splits,
        tokens_per_split=tokens_per_split,
        config=config,
        norm_inline=inline,
    )
    kv = kv_parts[0] if splits == 1 else kv_parts.sum(0)
    ksum = None
    if inline:
        ksum = ks_parts[0] if splits == 1 else ks_parts.sum(0)
    return LinearAttentionState(kv, ksum)


_SIDE_STREAMS: dict = {}


# PLA overlaps its encoder reduction with the normaliser passes from this prompt length on: faster
# at 8k and above, slower at 2k (docs/benchmarks.md, eighth run)
SIDE_STREAM_MIN_TOKENS = 8192


def _side_stream(device: torch.device):
    key = device.index if device.index is not None else torch.cuda.current_device()
    if key not in _SIDE_STREAMS:
        _SIDE_STREAMS[key] = torch.cuda.Stream(device=device)
    return _SIDE_STREAMS[key]


def pla_prefill(
    q,
    k,
    v,
    k_enc,
    v_enc,
    *,
    enc_lengths,
    mask=None,
    eps=1e-12,
    output_final_state=False,
    config: ChunkConfig | None = None,
    encoder_config: ChunkConfig | None = None,
):
    """Prefix linear attention: the encoder reduction (``encoder_config``, default
    DEFAULT_ENCODER_CONFIG), then the causal prefill started from its state (``config``, default
    DEFAULT_CONFIG). On a GPU, with both normalisers in their own pass, the encoder reduction runs
    on a side stream beside the normaliser passes (they need only the encoder's normaliser)."""
    if not supports(q):
        return reference.pla_chunked(
            q,
            k,
            v,
            k_enc,
            v_enc,
            enc_lengths=enc_lengths,
            mask=mask,
            eps=eps,
            output_final_state=output_final_state,
        )
    config = config or DEFAULT_CONFIG
    encoder_config = encoder_config or DEFAULT_ENCODER_CONFIG
    overlap = q.is_cuda and q.shape[1] >= SIDE_STREAM_MIN_TOKENS
    if not (overlap and config.normaliser_block > 0 and encoder_config.normaliser_block > 0):
        enc = encoder_state(k_enc, v_enc, enc_lengths=enc_lengths, mask=mask, config=encoder_config)
        return based_prefill(
            q,
            k,
            v,
            mask=mask,
            eps=eps,
            initial_state=enc,
            output_final_state=output_final_state,
            config=config,
        )
    q, k, k_enc, v_enc = q.contiguous(), k.contiguous(), k_enc.contiguous(), v_enc.contiguous()
    mask_u8 = mask.to(torch.uint8).contiguous() if mask is not None else None
    enc_len = enc_lengths.to(torch.int32).contiguous()
    main = torch.cuda.current_stream(q.device)
    side = _side_stream(q.device)
    side.wait_stream(main)  # the inputs above are ready
    with torch.cuda.stream(side):
        enc_kv = _encoder_kv(k_enc, v_enc, mask_u8=mask_u8, enc_len=enc_len, config=encoder_config).kv
    enc_ksum = _encoder_ksum(k_enc, mask_u8=mask_u8, enc_len=enc_len, config=encoder_config)
    normaliser = _causal_normaliser(q, k, mask_u8=mask_u8, init_ksum=enc_ksum, config=config)
    main.wait_stream(side)
    enc_kv.record_stream(main)  # made on the side stream, used on this one from here on
    return based_prefill(
        q,
        k,
        v,
        mask=mask,
        eps=eps,
        initial_state=LinearAttentionState(enc_kv, enc_ksum),
        output_final_state=output_final_state,
        config=config,
        _normaliser=normaliser,
    )
