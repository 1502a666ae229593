"""Kernels == references at full size on a CUDA GPU (marker `gpu`; skipped on CPU)."""

import dataclasses

import pytest
import torch

from jrt_prompt.kernels import (
    LinearAttentionState,
    based_linear_attention,
    linear_attention_step,
    prefix_linear_attention,
)
from jrt_prompt.kernels.based.reference import based_chunked
from jrt_prompt.kernels.based.triton_prefill import based_prefill
from jrt_prompt.kernels.pla.triton_prefill import encoder_state, pla_prefill
from jrt_prompt.kernels.taylor.config import DEFAULT_CONFIG
from jrt_prompt.kernels.taylor.reference import state_from_tokens, step_reference

pytestmark = pytest.mark.gpu

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-2}
# None: the public ops (default kernel config: pairs "cyclic", the normaliser in its own pass);
# "onehot": the other pair layout; "cyclic-inline": the normaliser inside the prefill kernel
PAIRS = [None, "onehot", "cyclic-inline"]


def _config(pairs, **kw):
    config = dataclasses.replace(DEFAULT_CONFIG, **kw)
    if pairs is None:
        return config
    layout, _, inline = pairs.partition("-")
    return dataclasses.replace(config, pairs=layout, **({"normaliser_block": 0} if inline else {}))


def _based(q, k, v, pairs, **kw):
    if pairs is None:
        return based_linear_attention(q, k, v, **kw)
    return based_prefill(q, k, v, config=_config(pairs), **kw)


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _inputs(b, n, h, dv, dtype, seed=0, scale=1.0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [
        (torch.randn(b, n, h, d, generator=g, device="cuda") * scale).to(dtype) for d in (16, 16, dv, 16, dv)
    ]


def _chunked_ref(q, k, v, **kw):
    """fp32 chunked reference on the GPU (big chunks: it is a loop of einsums)."""
    return based_chunked(q.float(), k.float(), v.float(), chunk_size=512, **kw)


@pytest.mark.parametrize("pairs", PAIRS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_based_full_size(dtype, pairs):
    n = 8000  # not a multiple of any chunk size
    q, k, v, _, _ = _inputs(4, n, 16, 64, dtype)
    mask = torch.ones(4, n, dtype=torch.bool, device="cuda")
    mask[1, :1000] = False  # left padding
    o, st = _based(q, k, v, pairs, mask=mask, output_final_state=True)
    o_ref, st_ref = _chunked_ref(q, k, v, mask=mask, output_final_state=True)
    assert o.dtype == dtype and torch.isfinite(o).all()
    assert _rel(o, o_ref) < TOL[dtype]
    assert _rel(st.kv, st_ref.kv) < TOL[dtype] and _rel(st.ksum, st_ref.ksum) < 1e-5


@pytest.mark.parametrize("pairs", PAIRS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_pla_full_size_mixed_encoder_lengths(dtype, pairs):
    n = 4100
    q, k, v, ke, ve = _inputs(4, n, 16, 64, dtype, seed=1)
    enc = torch.tensor([0, 1, n, 1024], device="cuda")
    mask = torch.ones(4, n, dtype=torch.bool, device="cuda")
    mask[3, :300] = False
    if pairs is None:
        o, st = prefix_linear_attention(q, k, v, ke, ve, enc_lengths=enc, mask=mask, output_final_state=True)
    else:
        o, st = pla_prefill(
            q, k, v, ke, ve, enc_lengths=enc, mask=mask, output_final_state=True, config=_config(pairs)
        )
    w_enc = (torch.arange(n, device="cuda")[None] < enc[:, None]).float() * mask.float()
    enc_state = state_from_tokens(ke.float(), ve.float(), w_enc)
    o_ref, st_ref = _chunked_ref(q, k, v, mask=mask, initial_state=enc_state, output_final_state=True)
    assert _rel(o, o_ref) < TOL[dtype]
    assert _rel(st.kv, st_ref.kv) < TOL[dtype] and _rel(st.ksum, st_ref.ksum) < 1e-5


@pytest.mark.parametrize("pairs", PAIRS)
@pytest.mark.parametrize("segments", [1, 8])
def test_segmented_and_single_pass_agree_at_32k(segments, pairs):
    q, k, v, _, _ = _inputs(2, 32768, 4, 64, torch.bfloat16, seed=2)
    cfg = _config(pairs, segments=segments)
    o, st = based_prefill(q, k, v, output_final_state=True, config=cfg)
    o_ref, st_ref = _chunked_ref(q, k, v, output_final_state=True)
    assert _rel(o, o_ref) < 2e-2 and _rel(st.kv, st_ref.kv) < 2e-2


@pytest.mark.parametrize("pairs", PAIRS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_64k_tokens_normaliser_does_not_overflow(dtype, pairs):
    """At 64k tokens the normaliser and the state sums pass 65,504 (fp16's max): both must stay fp32."""
    n = 65536
    q, k, v, _, _ = _inputs(1, n, 2, 64, dtype, seed=3, scale=1.5)
    v = (v.float() + 2.0).to(dtype)  # values with a mean: the constant-feature sum grows like 2n
    o, st = _based(q, k, v, pairs, output_final_state=True)
    assert st.ksum[..., 0].min().item() == n  # the constant feature counts every token
    assert torch.isfinite(o).all()
    o_ref, _ = _chunked_ref(q, k, v)
    assert _rel(o, o_ref) < 2e-2


@pytest.mark.parametrize("batch", [1, 64])
def test_decode_step_full_size(batch):
    q, k, v, _, _ = _inputs(batch, 300, 16, 64, torch.bfloat16, seed=4)
    _, st = based_linear_attention(q[:, :-4], k[:, :-4], v[:, :-4], output_final_state=True)
    st64 = LinearAttentionState(st.kv.double(), st.ksum.double())
    ptr = st.kv.data_ptr()
    o_full, _ = _chunked_ref(q, k, v)
    for t in range(296, 300):
        o_t = linear_attention_step(q[:, t], k[:, t], v[:, t], st)
        o_t_ref = step_reference(q[:, t].double(), k[:, t].double(), v[:, t].double(), st64)
        assert _rel(o_t, o_t_ref) < 2e-2
        assert _rel(o_t, o_full[:, t]) < 2e-2
    assert st.kv.data_ptr() == ptr
    assert _rel(st.kv, st64.kv) < 1e-3


@pytest.mark.parametrize(
    "num_warps,chunk,stages", [(4, 64, 2), (8, 64, 2), (8, 128, 2), (4, 32, 2), (4, 64, 3), (4, 64, 4)]
)
def test_cyclic_layout_matches_onehot_kernel(num_warps, chunk, stages):
    """The tuned launch shapes of the cyclic kernel: same outputs and states as the one-hot kernel."""
    q, k, v, _, _ = _inputs(2, 5000, 8, 64, torch.bfloat16, seed=5)
    o_ref, st_ref = based_prefill(q, k, v, output_final_state=True, config=_config("onehot"))
    cfg = _config("cyclic", num_warps=num_warps, chunk=chunk, num_stages=stages)
    o, st = based_prefill(q, k, v, output_final_state=True, config=cfg)
    assert _rel(o, o_ref) < 1e-2 and _rel(st.kv, st_ref.kv) < 1e-4


@pytest.mark.parametrize("pairs", ["onehot", "cyclic", "cyclic-inline"])
@pytest.mark.parametrize(
    "num_warps,chunk,stages,block_dv",
    [
        (4, 64, 2, 64),
        (4, 128, 2, 64),
        (8, 128, 2, 64),
        (8, 256, 2, 64),
        (4, 128, 3, 64),
        (4, 128, 4, 64),
        (4, 128, 2, 32),
    ],
)
def test_encoder_reduction_launch_shapes(num_warps, chunk, stages, block_dv, pairs):
    """The encoder pass under the shapes its tuner tries: the reference state, mixed lengths."""
    _, _, _, ke, ve = _inputs(3, 9000, 8, 64, torch.bfloat16, seed=6)
    enc = torch.tensor([9000, 1, 4321], device="cuda")
    mask = torch.ones(3, 9000, dtype=torch.bool, device="cuda")
    mask[2, :500] = False
    st = encoder_state(
        ke,
        ve,
        enc_lengths=enc,
        mask=mask,
        config=_config(pairs, num_warps=num_warps, chunk=chunk, num_stages=stages, block_dv=block_dv),
    )
    w = (torch.arange(9000, device="cuda")[None] < enc[:, None]).float() * mask.float()
    st_ref = state_from_tokens(ke.float(), ve.float(), w)
    assert _rel(st.kv, st_ref.kv) < 1e-2 and _rel(st.ksum, st_ref.ksum) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("warps,block", [(1, 1024), (2, 512), (2, 2048), (4, 1024), (2, 64)])
def test_normaliser_pass_launch_shapes(warps, block, dtype):
    """The normaliser pass under the shapes its tuner tries: the same outputs as the normaliser
    carried inside the kernel, and the reference normaliser, with padding and an initial state."""
    q, k, v, _, _ = _inputs(2, 9000, 8, 64, dtype, seed=7)
    mask = torch.ones(2, 9000, dtype=torch.bool, device="cuda")
    mask[0, :700] = False
    init = state_from_tokens(k[:, :300].float(), v[:, :300].float(), torch.ones(2, 300, device="cuda"))
    kw = dict(mask=mask, initial_state=init, output_final_state=True)
    o_in, st_in = based_prefill(q, k, v, config=_config("cyclic-inline"), **kw)
    cfg = _config(None, normaliser_warps=warps, normaliser_block=block)
    o, st = based_prefill(q, k, v, config=cfg, **kw)
    assert _rel(o, o_in) < 1e-2 and _rel(st.ksum, st_in.ksum) < 1e-5  # fp32 sums in another order
    st_ref = state_from_tokens(k.double(), v.double(), mask.double())  # fp64: the error is ours
    # fp32 accumulation over 9k tokens on the tensor cores: measured 1.08e-5 for fp16 inputs in
    # blocks of 2048, under 1e-5 in the other shapes
    assert _rel(st.ksum, st_ref.ksum + init.ksum.double()) < 2e-5
