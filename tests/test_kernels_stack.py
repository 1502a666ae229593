"""The JRT / Based stack's small element-wise ops: Triton (interpreter on CPU) == reference,
and the stack routes its small calls to them on the Triton backend."""

import pytest
import torch
from test_modeling_jrt import _prefill_then_decode, tiny_model

from jrt_prompt.kernels import stack
from jrt_prompt.kernels.stack import reference as ref
from jrt_prompt.models import fused

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 40), (2, 1, 2 * 1100)])
def test_swiglu_kernel_equals_reference(force_triton, dtype, shape):
    h = torch.randn(*shape, generator=_gen(0)).to(dtype)
    out = stack.swiglu(h)
    assert out.shape == ref.swiglu(h).shape and out.dtype == dtype
    torch.testing.assert_close(out, ref.swiglu(h), **TOL[dtype])
    strided = torch.randn(3, 2 * shape[-1], generator=_gen(1)).to(dtype)[:, : shape[-1]]
    torch.testing.assert_close(stack.swiglu(strided), ref.swiglu(strided), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kernel", [2, 3, 4])
@pytest.mark.parametrize("channels", [12, 300])
def test_conv_gate_step_kernel_equals_reference_and_rolls_in_place(force_triton, dtype, kernel, channels):
    g = _gen(kernel)
    u = torch.randn(3, 3 * channels, generator=g).to(dtype)[:, : 2 * channels]  # a projection's slice
    state = torch.randn(3, channels, kernel - 1, generator=g).to(dtype)
    weight = torch.randn(channels, 1, kernel, generator=g).to(dtype)[:, 0, :]  # the conv's view
    expect_out, expect_state = ref.short_conv_gate_step(u, state.clone(), weight)
    mine = state.clone()
    out, new_state = stack.short_conv_gate_step(u, mine, weight)
    assert new_state is mine  # rolled in place
    torch.testing.assert_close(out, expect_out, **TOL[dtype])
    assert torch.equal(new_state, expect_state)
    # steps chain: the next one reads the rolled window
    out2, _ = stack.short_conv_gate_step(u.flip(0), mine, weight)
    torch.testing.assert_close(
        out2, ref.short_conv_gate_step(u.flip(0), expect_state, weight)[0], **TOL[dtype]
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("l", [1, 5])
def test_rotary_kernel_equals_reference(force_triton, dtype, l):
    g = _gen(l)
    qkv = torch.randn(2, l, 3, 4, 16, generator=g).to(dtype)
    angles = torch.randn(1, l, 1, 6, generator=g).expand(2, l, 1, 6)  # 12 of 16 channels rotate
    out = stack.rotary_qkv(qkv, angles.cos(), angles.sin())
    expect = ref.rotary_qkv(qkv, angles.cos(), angles.sin())
    for a, b in zip(out, expect, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, **TOL[dtype])
    assert torch.equal(out[0][..., 12:], qkv[:, :, 0, :, 12:])  # channels past 2·half untouched
    one_row = angles[:1]  # tables shared by every row (a size-1 batch dim, broadcast)
    out = stack.rotary_qkv(qkv, one_row.cos(), one_row.sin())
    for a, b in zip(out, ref.rotary_qkv(qkv, one_row.cos(), one_row.sin()), strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])


def test_reference_backend_runs_the_math_of_record():
    h = torch.randn(2, 8, generator=_gen(3))
    assert torch.equal(stack.swiglu(h), ref.swiglu(h))
    assert fused.swiglu is ref.swiglu and fused.rotary_qkv is ref.rotary_qkv


def test_stack_routes_small_calls_to_the_kernels(force_triton, monkeypatch):
    from jrt_prompt.kernels.norm import triton as norm_triton
    from jrt_prompt.kernels.stack import triton as stack_triton

    calls = []
    for module, name in [
        (norm_triton, "residual_rms_norm"),
        (stack_triton, "swiglu"),
        (stack_triton, "short_conv_gate_step"),
        (stack_triton, "rotary_qkv"),
    ]:
        real = getattr(module, name)
        monkeypatch.setattr(
            module, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k)
        )
    x = torch.randn(2, 1, 16, generator=_gen(4))
    w = torch.rand(16, generator=_gen(5)) + 0.5
    with torch.no_grad():
        torch.testing.assert_close(fused.run(fused.rms_norm, x, w, 1e-5), fused.rms_norm(x, w, 1e-5))
        total, normed = fused.run(fused.add_rms_norm, x, x.bfloat16(), w, 1e-5)
        expect = fused.add_rms_norm(x, x.bfloat16(), w, 1e-5)
        assert torch.equal(total, expect[0])
        torch.testing.assert_close(normed, expect[1])
        fused.run(fused.swiglu, torch.randn(2, 8))
    assert calls == ["residual_rms_norm", "residual_rms_norm", "swiglu"]
    fused.run(fused.swiglu, torch.randn(2, 8))  # gradients on: the plain function
    assert len(calls) == 3


@pytest.mark.parametrize("mixer", ["base_conv", "sliding_window", "prefix_linear"])
@pytest.mark.parametrize("batch", [1, 2])
def test_tiny_model_decode_through_the_kernels_equals_the_reference(mixer, batch, force_triton, monkeypatch):
    """Prefill then decode of a tiny JRT model on the fast stack, every op through Triton's
    interpreter, against the same with the PyTorch references; at batch 1 the steps' projections
    go through the one-row linear kernel."""
    from jrt_prompt.kernels.linear import triton as linear_kernels

    monkeypatch.setenv("JRT_STACK", "fast")
    rows = []
    row_linear = linear_kernels.row_linear
    monkeypatch.setattr(linear_kernels, "row_linear", lambda *a, **k: rows.append(1) or row_linear(*a, **k))
    model = tiny_model([mixer, "base_conv"] if mixer != "base_conv" else ["base_conv"])
    ids = torch.randint(0, 61, (batch, 10), generator=_gen(6))
    with torch.no_grad():
        got, _ = _prefill_then_decode(model, ids, 6)
        assert bool(rows) == (batch == 1)
        monkeypatch.setenv("JRT_KERNELS", "reference")
        expect, _ = _prefill_then_decode(model, ids, 6)
    torch.testing.assert_close(got, expect, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 64])
def test_gpu_stack_kernels_at_full_width(dtype, batch):
    """JRT-RNN-1.3B's widths (d 1792, 16 heads of 112, BaseConv kernel 3)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    g = torch.Generator(device="cuda").manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, device="cuda", generator=g).to(dtype)

    h = rnd(batch, 1, 2 * 3584)
    torch.testing.assert_close(stack.swiglu(h), ref.swiglu(h), **TOL[dtype])
    u, state, weight = rnd(batch, 2 * 1792), rnd(batch, 1792, 2), rnd(1792, 3)
    expect_out, expect_state = ref.short_conv_gate_step(u, state.clone(), weight)
    out, new_state = stack.short_conv_gate_step(u, state, weight)
    torch.testing.assert_close(out, expect_out, **TOL[dtype])
    assert torch.equal(new_state, expect_state)
    qkv = rnd(batch, 1, 3, 16, 112)
    angles = torch.randn(batch, 1, 1, 28, device="cuda", generator=g)
    for a, b in zip(
        stack.rotary_qkv(qkv, angles.cos(), angles.sin()),
        ref.rotary_qkv(qkv, angles.cos(), angles.sin()),
        strict=True,
    ):
        torch.testing.assert_close(a, b, **TOL[dtype])
