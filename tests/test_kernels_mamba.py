"""Mamba-1 kernels (selective scan, causal conv1d, one-token updates) == references == transformers.

On CPU the Triton kernels run through Triton's interpreter on small shapes; on a CUDA GPU the
`gpu` tests run them at Mamba-1.4B's sizes.
"""


import pytest
import torch

from jrt_prompt.kernels import mamba as ops
from jrt_prompt.kernels.mamba import reference as ref

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-2}


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _scan_inputs(batch, d, length, n, dtype, device="cpu", seed=0, rank=3):
    """Inputs laid out as transformers' MambaMixer makes them (views of its projections)."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    xz = rnd(batch, length, 2 * d).to(dtype)
    x, z = xz[..., :d].transpose(1, 2), xz[..., d:].transpose(1, 2)
    dt = rnd(batch, d, length, scale=0.5).to(dtype)
    A = -(torch.rand(d, n, generator=g) * 2 + 0.05).to(device)
    proj = rnd(batch, length, rank + 2 * n).to(dtype)
    B, C = proj[..., rank : rank + n].transpose(1, 2), proj[..., rank + n :].transpose(1, 2)
    D = rnd(d)
    bias = rnd(d, scale=0.1)
    h0 = rnd(batch, d, n)
    return x, dt, A, B, C, D, z, bias, h0


def test_scan_reference_equals_transformers():
    from transformers.models.mamba.modeling_mamba import mamba_selective_scan

    x, dt, A, B, C, D, z, bias, _ = _scan_inputs(2, 8, 13, 4, torch.float32)
    fn = getattr(mamba_selective_scan, "__wrapped__", mamba_selective_scan)
    y_hf, h_hf = fn(x, dt, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True, return_last_state=True)
    y, h = ref.selective_scan_reference(x, dt, A, B, C, D, z, bias, True, None, True)
    assert _rel(y, y_hf) < 1e-5 and _rel(h, h_hf) < 1e-5


@pytest.mark.parametrize("length", [1, 17, 40])
@pytest.mark.parametrize("chunks", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("prefetch", [True, False])
def test_scan_triton_equals_reference(force_triton, length, chunks, dtype, prefetch):
    from jrt_prompt.kernels.mamba import triton as kernels

    config = kernels.ScanConfig(block_d=16, num_warps=1, prefetch=prefetch)
    x, dt, A, B, C, D, z, bias, h0 = _scan_inputs(2, 20, length, 6, dtype, seed=length)
    for init in (None, h0):
        y_ref, h_ref = ref.selective_scan_reference(x, dt, A, B, C, D, z, bias, True, init, True)
        y, h = kernels.selective_scan(x, dt, A, B, C, D, z, bias, True, init, True, chunks=chunks, config=config)
        assert y.dtype == dtype and h.dtype == torch.float32
        assert _rel(y, y_ref) < TOL[dtype] and _rel(h, h_ref) < 1e-4


def test_scan_without_optional_inputs(force_triton):
    x, dt, A, B, C, *_ = _scan_inputs(1, 16, 9, 16, torch.float32)
    assert _rel(ops.selective_scan(x, dt, A, B, C), ref.selective_scan_reference(x, dt, A, B, C)) < 1e-5


def test_scan_continues_from_its_state(force_triton):
    """Prefill in two pieces, the second starting from the first's state, equals one pass."""
    x, dt, A, B, C, D, z, bias, _ = _scan_inputs(2, 16, 30, 8, torch.float32, seed=3)
    y, h = ops.selective_scan(x, dt, A, B, C, D, z, bias, True, None, True)
    cut = 11
    part = lambda t, s: t[..., s]  # noqa: E731
    y1, h1 = ops.selective_scan(*(part(t, slice(0, cut)) for t in (x, dt)), A,
                                *(part(t, slice(0, cut)) for t in (B, C)), D, part(z, slice(0, cut)),
                                bias, True, None, True)
    y2, h2 = ops.selective_scan(*(part(t, slice(cut, None)) for t in (x, dt)), A,
                                *(part(t, slice(cut, None)) for t in (B, C)), D, part(z, slice(cut, None)),
                                bias, True, h1, True)
    assert _rel(torch.cat([y1, y2], -1), y) < 1e-5 and _rel(h2, h) < 1e-5


def test_scan_then_steps_equal_one_scan(force_triton):
    x, dt, A, B, C, D, z, bias, _ = _scan_inputs(2, 16, 12, 8, torch.float32, seed=5)
    y, h = ops.selective_scan(x, dt, A, B, C, D, z, bias, True, None, True)
    _, state = ops.selective_scan(x[..., :8], dt[..., :8], A, B[..., :8], C[..., :8], D, z[..., :8], bias,
                                  True, None, True)
    for t in range(8, 12):
        y_t = ops.selective_state_update(state, x[..., t], dt[..., t], A, B[..., t], C[..., t], D, z[..., t],
                                         bias, True)
        assert _rel(y_t, y[..., t]) < 1e-5
    assert _rel(state, h) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_update_triton_equals_reference(force_triton, dtype):
    from jrt_prompt.kernels.mamba import triton as kernels

    g = torch.Generator().manual_seed(1)
    d, n = 24, 16
    x, dt, z = (torch.randn(3, d, generator=g).to(dtype) for _ in range(3))
    A = -torch.rand(d, n, generator=g)
    B, C = (torch.randn(3, n, generator=g).to(dtype) for _ in range(2))
    D, bias = torch.randn(d, generator=g), torch.randn(d, generator=g)
    s1 = torch.randn(3, d, n, generator=g)
    s2 = s1.clone()
    y1 = kernels.selective_state_update(s1, x, dt, A, B, C, D, z, bias, True, block_d=16)
    y2 = ref.selective_state_update_reference(s2, x, dt, A, B, C, D, z, bias, True)
    assert _rel(y1, y2) < TOL[dtype] and _rel(s1, s2) < 1e-5


def test_conv_reference_equals_transformers():
    from transformers.models.mamba.modeling_mamba import causal_conv1d_fn, causal_conv1d_update

    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 8, 11, generator=g)
    w, b = torch.randn(8, 4, generator=g), torch.randn(8, generator=g)
    fn = getattr(causal_conv1d_fn, "__wrapped__", causal_conv1d_fn)
    assert _rel(ref.causal_conv1d_reference(x, w, b, "silu"), fn(x, w, b, activation="silu")) < 1e-6
    upd = getattr(causal_conv1d_update, "__wrapped__", causal_conv1d_update)
    s1 = torch.randn(2, 8, 4, generator=g)
    s2 = s1.clone()
    x1 = torch.randn(2, 8, generator=g)
    out_hf = upd(x1[..., None], s1, w, b, activation="silu")[..., 0]
    out = ref.causal_conv1d_update_reference(x1, s2, w, b, "silu")
    assert _rel(out, out_hf) < 1e-6 and torch.equal(s1, s2)


@pytest.mark.parametrize("length", [1, 3, 37])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv_triton_equals_reference(force_triton, length, dtype):
    from jrt_prompt.kernels.mamba import triton as kernels

    g = torch.Generator().manual_seed(length)
    xz = torch.randn(2, length, 40, generator=g).to(dtype)
    x = xz[..., :20].transpose(1, 2)  # a channels-contiguous view, as the mixer passes it
    w, b = torch.randn(20, 4, generator=g), torch.randn(20, generator=g)
    init = torch.randn(2, 20, 4, generator=g).to(dtype)
    for bias, act, state in ((b, "silu", None), (None, None, init), (b, "silu", init)):
        out = kernels.causal_conv1d(x, w, bias, act, state, block_t=16, block_d=16)
        assert _rel(out, ref.causal_conv1d_reference(x, w, bias, act, state)) < TOL[dtype]


def test_conv_update_triton_equals_reference(force_triton):
    from jrt_prompt.kernels.mamba import triton as kernels

    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 20, generator=g)
    w, b = torch.randn(20, 4, generator=g), torch.randn(20, generator=g)
    s1 = torch.randn(3, 20, 4, generator=g)
    s2 = s1.clone()
    out = kernels.causal_conv1d_update(x, s1, w, b, "silu", block_d=16)
    assert _rel(out, ref.causal_conv1d_update_reference(x, s2, w, b, "silu")) < 1e-5
    assert torch.equal(s1, s2)


def test_bad_shapes_are_one_line_errors():
    from jrt_prompt.errors import JRTError

    x, dt, A, B, C, *_ = _scan_inputs(1, 8, 5, 4, torch.float32)
    with pytest.raises(JRTError, match="B must be"):
        ops.selective_scan(x, dt, A, B[:, :2], C)
    with pytest.raises(JRTError, match="activation"):
        ops.causal_conv1d(x, torch.randn(8, 4), activation="gelu")


# --- full size on the GPU -------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("batch,length", [(1, 2048), (1, 4097), (8, 1000)])
def test_scan_gpu_mamba_1_4b_sizes(batch, length):
    from jrt_prompt.kernels.mamba import triton as kernels

    x, dt, A, B, C, D, z, bias, h0 = _scan_inputs(batch, 4096, length, 16, torch.bfloat16, device="cuda",
                                                  rank=128)
    for init in (None, h0):
        y_ref, h_ref = ref.selective_scan_reference(x[:1, :512], dt[:1, :512], A[:512], B[:1], C[:1], D[:512],
                                                    z[:1, :512], bias[:512], True,
                                                    None if init is None else init[:1, :512], True)
        y, h = kernels.selective_scan(x, dt, A, B, C, D, z, bias, True, init, True)
        assert _rel(y[:1, :512], y_ref) < 2e-2 and _rel(h[:1, :512], h_ref) < 1e-3
        for chunks in (1, 7):
            y2, h2 = kernels.selective_scan(x, dt, A, B, C, D, z, bias, True, init, True, chunks=chunks)
            assert _rel(y2, y) < 1e-2 and _rel(h2, h) < 1e-4


@pytest.mark.gpu
def test_conv_gpu_full_size():
    g = torch.Generator().manual_seed(0)
    xz = torch.randn(2, 3001, 8192, generator=g).cuda().bfloat16()
    x = xz[..., :4096].transpose(1, 2)
    w, b = torch.randn(4096, 4, generator=g).cuda(), torch.randn(4096, generator=g).cuda()
    out = ops.causal_conv1d(x, w, b, "silu")
    assert _rel(out, ref.causal_conv1d_reference(x, w, b, "silu")) < 2e-2
