"""The PyTorch references agree with each other and with the stated math (CPU, fast)."""

import math

import pytest
import torch

from jrt_prompt.errors import JRTError
from jrt_prompt.kernels import (
    LinearAttentionState,
    based_linear_attention,
    linear_attention_step,
    prefix_linear_attention,
    taylor_feature_map,
)
from jrt_prompt.kernels.based.reference import based_chunked, based_quadratic
from jrt_prompt.kernels.pla.reference import pla_chunked, pla_quadratic
from jrt_prompt.kernels.taylor.reference import empty_state, state_from_tokens


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _inputs(b=2, n=37, h=3, f=4, dv=5, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, n, h, f, generator=g).to(dtype)
    k = torch.randn(b, n, h, f, generator=g).to(dtype)
    v = torch.randn(b, n, h, dv, generator=g).to(dtype)
    ke = torch.randn(b, n, h, f, generator=g).to(dtype)
    ve = torch.randn(b, n, h, dv, generator=g).to(dtype)
    return q, k, v, ke, ve


def test_feature_map_is_second_order_taylor_of_exp():
    x, y = torch.randn(7, 16, dtype=torch.float64), torch.randn(7, 16, dtype=torch.float64)
    fx, fy = taylor_feature_map(x), taylor_feature_map(y)
    assert fx.shape == (7, 273)
    s = (x * y).sum(-1) / 4.0
    torch.testing.assert_close((fx * fy).sum(-1), 1 + s + s * s / 2)
    # layout: constant, x / f^(1/4), row-major outer product / (sqrt2 * sqrt f)
    assert torch.all(fx[:, 0] == 1)
    torch.testing.assert_close(fx[:, 1:17], x / 2)
    torch.testing.assert_close(fx[:, 17 + 3 * 16 + 5], x[:, 3] * x[:, 5] / (4 * math.sqrt(2)))


def test_quadratic_matches_direct_loop():
    q, k, v, _, _ = _inputs(b=1, n=9, h=1, f=4, dv=3, dtype=torch.float64)
    o, _ = based_quadratic(q, k, v, eps=1e-12)
    pq, pk = taylor_feature_map(q[0, :, 0]), taylor_feature_map(k[0, :, 0])
    for i in range(9):
        a = pq[i] @ pk[: i + 1].T
        expect = (a @ v[0, : i + 1, 0]) / (a.sum() + 1e-12)
        torch.testing.assert_close(o[0, i, 0], expect)


@pytest.mark.parametrize("n", [1, 37, 64, 130])
def test_chunked_equals_quadratic_with_mask_and_state(n):
    q, k, v, _, _ = _inputs(n=n, dtype=torch.float64)
    mask = torch.rand(2, n, generator=torch.Generator().manual_seed(1)) > 0.3
    init = state_from_tokens(
        *_inputs(n=5, seed=3, dtype=torch.float64)[1:3], torch.ones(2, 5, dtype=torch.float64)
    )
    oq, sq = based_quadratic(q, k, v, mask=mask, initial_state=init, output_final_state=True)
    oc, sc = based_chunked(q, k, v, mask=mask, initial_state=init, output_final_state=True, chunk_size=16)
    assert _rel(oc, oq) < 1e-10
    assert _rel(sc.kv, sq.kv) < 1e-10 and _rel(sc.ksum, sq.ksum) < 1e-10
    assert torch.all(oq[~mask] == 0)


def test_masked_positions_contribute_nothing():
    q, k, v, _, _ = _inputs(b=1, n=12, dtype=torch.float64)
    mask = torch.ones(1, 12, dtype=torch.bool)
    mask[0, :4] = False  # left padding
    o_masked, s_masked = based_quadratic(q, k, v, mask=mask, output_final_state=True)
    o_short, s_short = based_quadratic(q[:, 4:], k[:, 4:], v[:, 4:], output_final_state=True)
    assert _rel(o_masked[:, 4:], o_short) < 1e-12
    assert _rel(s_masked.kv, s_short.kv) < 1e-12


@pytest.mark.parametrize("lengths", [0, 1, 37, [0, 20], [37, 1]])
def test_pla_chunked_equals_quadratic(lengths):
    q, k, v, ke, ve = _inputs(n=37, dtype=torch.float64)
    enc = torch.tensor(lengths) if isinstance(lengths, list) else torch.full((2,), lengths)
    oq, sq = pla_quadratic(q, k, v, ke, ve, enc_lengths=enc, output_final_state=True)
    oc, sc = pla_chunked(q, k, v, ke, ve, enc_lengths=enc, output_final_state=True, chunk_size=16)
    assert _rel(oc, oq) < 1e-10
    assert _rel(sc.kv, sq.kv) < 1e-10


def test_pla_with_no_encoder_is_based():
    q, k, v, ke, ve = _inputs(n=20, dtype=torch.float64)
    o_pla, _ = prefix_linear_attention(q, k, v, ke, ve, enc_lengths=0)
    o_based, _ = based_linear_attention(q, k, v)
    assert _rel(o_pla, o_based) < 1e-12


def test_decode_continues_prefill():
    """Prefill n-3 tokens then 3 steps == prefill of all n tokens (Based and PLA)."""
    q, k, v, ke, ve = _inputs(n=200, dtype=torch.float64)  # >128: chunked path through the dispatcher
    enc = torch.tensor([50, 160])
    o_full, _ = prefix_linear_attention(q, k, v, ke, ve, enc_lengths=enc)
    o_pre, state = prefix_linear_attention(
        q[:, :-3], k[:, :-3], v[:, :-3], ke[:, :-3], ve[:, :-3], enc_lengths=enc, output_final_state=True
    )
    assert _rel(o_pre, o_full[:, :-3]) < 1e-10
    for t in range(197, 200):
        o_t = linear_attention_step(q[:, t], k[:, t], v[:, t], state)
        assert _rel(o_t, o_full[:, t]) < 1e-10


def test_step_updates_state_in_place():
    q, k, v, _, _ = _inputs(b=2, n=1, h=3, f=4, dv=5)
    state = empty_state(2, 3, 4, 5, "cpu")
    kv_ptr = state.kv.data_ptr()
    linear_attention_step(q[:, 0], k[:, 0], v[:, 0], state)
    assert state.kv.data_ptr() == kv_ptr
    assert torch.all(state.ksum[..., 0] == 1)


def test_bad_inputs_raise_one_line_errors():
    q, k, v, ke, ve = _inputs()
    with pytest.raises(JRTError, match="same shape"):
        based_linear_attention(q, k[:, :-1], v)
    with pytest.raises(JRTError, match="mask"):
        based_linear_attention(q, k, v, mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(JRTError, match="enc_lengths"):
        prefix_linear_attention(q, k, v, ke, ve, enc_lengths=torch.tensor([1, 2, 3]))
    with pytest.raises(JRTError, match=">= 0"):
        prefix_linear_attention(q, k, v, ke, ve, enc_lengths=-1)
    bad = LinearAttentionState(torch.zeros(2, 3, 20, 5), torch.zeros(2, 3, 20))
    with pytest.raises(JRTError, match="state shapes"):
        linear_attention_step(q[:, 0], k[:, 0], v[:, 0], bad)
